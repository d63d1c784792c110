"""Test job: appends start/end records (jobid, attempt, time) so tests can check histories."""
import os
import time

from upqjob import UpqJob


def _append(path: str, line: str) -> None:
    # O_APPEND + one write per line: whole lines even with several writers
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class Record(UpqJob):
    def run(self):
        path = self.paths["records"]
        _append(path, f"start {self.jobid} {self.attempt} {time.time():.6f}")
        time.sleep(float(self.jobdata.get("sleep", "0")))
        _append(path, f"end {self.jobid} {self.attempt} {time.time():.6f}")
        self.msg = f"recorded {self.jobid}"
        self.result = {"attempt": self.attempt}
        return True
