"""Test job: records its start, then loops until `self.cancelled` (at most `max` s, default 20),
recording that it saw the flag."""
import os
import time

from upqjob import UpqJob


class Coop(UpqJob):
    def run(self):
        self._record("coop")
        deadline = time.monotonic() + float(self.jobdata.get("max", "20"))
        while not self.cancelled:
            if time.monotonic() > deadline:
                self.msg = "never told to stop"
                return True
            time.sleep(0.02)
        self._record("coopsaw")
        self.msg = "saw self.cancelled"
        return True

    def _record(self, event):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{event} {self.jobid} {self.attempt} {time.time():.6f}\n".encode())
        os.close(fd)
