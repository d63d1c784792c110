"""Test job: records its start, then SIGKILLs the process it runs in (the daemon, with thread
isolation), unless the file nokill exists next to [paths] records; then it is done.

It waits half a second first, as a job that works a while before it brings its daemon down:
the run's start is recorded by then (a start that was never recorded is not an interruption).
"""
import os
import signal
import time

from upqjob import UpqJob


class Killer(UpqJob):
    def run(self):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"start {self.jobid} {self.attempt} {time.time():.6f}\n".encode())
        os.fsync(fd)
        os.close(fd)
        if os.path.exists(os.path.join(os.path.dirname(self.paths["records"]), "nokill")):
            self.msg = "spared"
            return True
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
        return True
