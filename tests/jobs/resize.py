"""Test job written the way the 2011 README shows: check() validates and calls
self.enqueue_job(); run() reads self.jobcfg['var'] and sets self.msg."""
from upqjob import UpqJob


class Resize(UpqJob):
    def check(self):
        if not self.jobdata.get("file"):
            self.msg = "file missing"
            return False
        self.enqueue_job()
        return True

    def run(self):
        self.msg = "resized %s to %s" % (self.jobdata["file"], self.jobcfg["var"])
        self.result = {"file": self.jobdata["file"], "size": self.jobcfg["var"]}
        return True
