"""Poison test job: returns a result whose JSON is about `mb` MiB (default 50), or `kb` KiB."""
from upqjob import UpqJob


class Hugeresult(UpqJob):
    def run(self):
        if "kb" in self.jobdata:
            self.result = {"blob": "r" * (int(self.jobdata["kb"]) << 10)}
        else:
            chunk = "r" * (1 << 20)
            self.result = {"blob": [chunk] * int(self.jobdata.get("mb", "50"))}
        self.msg = "big result"
        return True
