"""Test job: records start and end, sleeping `seconds` in between and ignoring cancellation;
its late msg and result let a test see whether a timed-out run's outcome leaked through."""
import os
import time

from upqjob import UpqJob


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\n").encode())
    os.close(fd)


class Slowpoke(UpqJob):
    def run(self):
        _append(self.paths["records"], f"slowstart {self.jobid} {self.attempt} {time.time():.6f}")
        time.sleep(float(self.jobdata.get("seconds", "0")))
        self.msg = "late result: woke up"
        self.result = {"late": True}
        _append(self.paths["records"], f"slowend {self.jobid} {self.attempt} {time.time():.6f}")
        return True
