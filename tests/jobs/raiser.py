"""Test job: run() raises ValueError with the `why` param in its text (`kind:base`: a
BaseException that is not an Exception, like KeyboardInterrupt from a library)."""
from upqjob import UpqJob


class Raiser(UpqJob):
    def run(self):
        why = self.jobdata.get("why", "no reason")
        if self.jobdata.get("kind") == "base":
            raise KeyboardInterrupt("raiser interrupted: " + why)
        raise ValueError("raiser blew up: " + why)
