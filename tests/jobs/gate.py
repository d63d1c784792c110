"""Test job: records its start, then waits (at most 60 s) until the file gate.open exists
next to [paths] records
(a job with the param `pass` does not wait).

Lets a test hold a type's workers busy without guessing sleep lengths.
"""
import os
import time

from upqjob import UpqJob


class Gate(UpqJob):
    def run(self):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"start {self.jobid} {self.attempt} {time.time():.6f}\n".encode())
        os.close(fd)
        deadline = time.monotonic() + 60
        gate = os.path.join(os.path.dirname(self.paths["records"]), "gate.open")
        while "pass" not in self.jobdata and not os.path.exists(gate):
            if time.monotonic() > deadline:
                self.msg = "gate never opened"
                return False
            time.sleep(0.02)
        self.msg = "passed"
        return True
