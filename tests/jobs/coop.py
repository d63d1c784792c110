"""Test job: records its start, then loops until `self.cancelled` (at most `max` s, default 20)."""
import os
import time

from upqjob import UpqJob


class Coop(UpqJob):
    def run(self):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"coop {self.jobid} {self.attempt} {time.time():.6f}\n".encode())
        os.close(fd)
        deadline = time.monotonic() + float(self.jobdata.get("max", "20"))
        while not self.cancelled:
            if time.monotonic() > deadline:
                self.msg = "never told to stop"
                return True
            time.sleep(0.02)
        self.msg = "saw self.cancelled"
        return True
