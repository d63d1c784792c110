"""Test job: check() refuses with a msg (holding CR/LF, which the answer must not carry)."""
from upqjob import UpqJob


class Checkrefuse(UpqJob):
    def check(self):
        self.msg = "refused:\r\nnot today " + self.jobdata.get("why", "")
        return False

    def run(self):
        return True
