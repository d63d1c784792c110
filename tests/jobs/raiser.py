"""Test job: run() raises ValueError with the `why` param in its text."""
from upqjob import UpqJob


class Raiser(UpqJob):
    def run(self):
        raise ValueError("raiser blew up: " + self.jobdata.get("why", "no reason"))
