"""Poison test job: sets a `mb` MiB msg (default 10) and succeeds (or fails with `fail:1`)."""
from upqjob import UpqJob


class Hugemsg(UpqJob):
    def run(self):
        self.msg = "m" * (int(self.jobdata.get("mb", "10")) << 20)
        return "fail" not in self.jobdata
