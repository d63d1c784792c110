"""Test job: check() raises, so the submission must get ERR naming the exception."""
from upqjob import UpqJob


class Checkraise(UpqJob):
    def check(self):
        raise ValueError("broken check\nsecond line\r" + self.jobdata.get("why", ""))

    def run(self):
        return True
