"""Test job: sleeps `seconds` (default 3) ignoring cancellation; for timeouts."""
import time

from upqjob import UpqJob


class Hang(UpqJob):
    def run(self):
        time.sleep(float(self.jobdata.get("seconds", "3")))
        self.msg = "woke up"
        return True
