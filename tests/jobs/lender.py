"""Test job: records `lendstart`, submits a `hello` child and waits for it, then records
`lendbusy` and works `work` seconds (default 0.5) before `lendend`; the records show how
many runs of the type were busy (not waiting on a child) at once."""
import os
import time

from upqjob import UpqJob


class Lender(UpqJob):
    def run(self):
        self._record("lendstart")
        child = self.submit("hello", {"name": f"child-of-{self.jobid}"})
        if not child.finished.wait(10):
            self.msg = f"child {child.jobid} did not finish in time"
            return False
        self._record("lendbusy")
        time.sleep(float(self.jobdata.get("work", "0.5")))
        self._record("lendend")
        self.msg = f"child said {child.msg}"
        return True

    def _record(self, event):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{event} {self.jobid} {self.attempt} {time.time():.6f}\n".encode())
        os.close(fd)
