"""Test job: present in jobs_dir but configured `enabled = false`; must be unreachable."""
import os

from upqjob import UpqJob


class Disabled(UpqJob):
    def run(self):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"start {self.jobid} {self.attempt} disabled-ran\n".encode())
        os.close(fd)
        return True
