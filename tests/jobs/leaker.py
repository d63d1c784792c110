"""Poison test job: leaks `threads` (default 50) non-daemon threads that sleep for an hour, then succeeds.

A daemon that ends with sys.exit() would wait for them forever; upq must still stop on SIGTERM."""
import threading
import time

from upqjob import UpqJob


class Leaker(UpqJob):
    def run(self):
        n = int(self.jobdata.get("threads", "50"))
        for i in range(n):
            threading.Thread(target=time.sleep, args=(3600,), name=f"leaked-{self.jobid}-{i}",
                             daemon=False).start()
        self.msg = f"leaked {n} threads"
        return True
