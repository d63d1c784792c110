"""Test job: run() calls sys.exit() with the `code` param (default 3)."""
import sys

from upqjob import UpqJob


class Exiter(UpqJob):
    def run(self):
        sys.exit(int(self.jobdata.get("code", "3")))
