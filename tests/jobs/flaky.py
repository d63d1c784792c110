"""Test job: records each attempt's start, then fails until attempt `succeed_on` (default: never)."""
import os
import time

from upqjob import UpqJob


class Flaky(UpqJob):
    def run(self):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"flaky {self.jobid} {self.attempt} {time.time():.6f}\n".encode())
        os.close(fd)
        succeed_on = int(self.jobdata.get("succeed_on", "0"))
        if succeed_on and self.attempt >= succeed_on:
            self.msg = f"succeeded on attempt {self.attempt}"
            self.result = {"attempt": self.attempt}
            return True
        self.msg = f"flaky failure on attempt {self.attempt}"
        return False
