"""Test job, 2011 style gone wrong: check() enqueues itself, then refuses (or raises, with `raise`)."""
import os

from upqjob import UpqJob


class Enqueuerefuse(UpqJob):
    def check(self):
        self.enqueue_job()
        if "raise" in self.jobdata:
            raise RuntimeError(f"blew up after enqueueing {self.jobid}")
        self.msg = f"changed my mind about {self.jobid}"
        return False

    def run(self):
        # must never happen: a refused job was removed
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"start {self.jobid} {self.attempt} enqueuerefuse-ran\n".encode())
        os.close(fd)
        return True
