"""Test job: records each attempt, asks `self.retry("busy", delay)` for the first `busy`
attempts, then succeeds, or fails when the param `fail` is given."""
import os
import time

from upqjob import UpqJob


class Selfretry(UpqJob):
    def run(self):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"selfretry {self.jobid} {self.attempt} {time.time():.6f}\n".encode())
        os.close(fd)
        if self.attempt <= int(self.jobdata.get("busy", "1")):
            return self.retry(f"busy on attempt {self.attempt}", delay=float(self.jobdata.get("delay", "0.3")))
        if "fail" in self.jobdata:
            self.msg = f"real failure on attempt {self.attempt}"
            return False
        self.msg = f"done on attempt {self.attempt}"
        return True
