"""Test job: check() changes jobdata (before or, with `early`, after enqueue_job());
upq must store jobdata as check() leaves it, and run() must see that."""
from upqjob import UpqJob


class Stamp(UpqJob):
    def check(self):
        if "early" in self.jobdata:
            self.enqueue_job()
        self.jobdata["stamped"] = "yes"
        self.jobdata.pop("drop", None)
        return True

    def run(self):
        self.result = dict(self.jobdata)
        self.msg = "seen " + ",".join(sorted(self.jobdata))
        return True
