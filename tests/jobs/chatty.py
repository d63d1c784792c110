"""Test job for per-job logs: `lines` lines through self.logger (default 3), in a worker process also
print() and a program's output; with `hold`, one line and then waits for the file `hold` to appear."""
import os
import subprocess
import time

from upqjob import UpqJob


class Chatty(UpqJob):
    def run(self):
        for i in range(int(self.jobdata.get("lines", "3"))):
            self.logger.info("line %d of attempt %d", i, self.attempt)
        if self.jobdata.get("print"):
            print(f"printed by attempt {self.attempt}")
            subprocess.run(["sh", "-c", "echo from a program; echo to stderr >&2"], check=True)
        hold = self.jobdata.get("hold")
        if hold:
            self.logger.info("holding")
            deadline = time.monotonic() + 30
            while not os.path.exists(hold) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.jobdata.get("fail") and self.attempt == 1:
            self.msg = "first attempt fails"
            return False
        return True
