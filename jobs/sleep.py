"""sleep: a job that takes a while, for trying `wait`, `cancel` and `stats`.

Try `./upq-cli.py --wait sleep seconds:3`, or submit one with `seconds:600` and
`./upq-cli.py cancel <jobid>` it.
"""
import math
import time

from upqjob import UpqJob

MAX_SECONDS = 3600
STEP = 0.1          # how often a sleeping job looks whether it was cancelled


class Sleep(UpqJob):
    """Sleeps `seconds` (0..3600, default 1), stopping early when cancelled."""

    def check(self):
        """Validate `seconds`, then enqueue the job ourselves, the 2011 way."""
        try:
            seconds = float(self.jobdata.get("seconds", "1"))
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= MAX_SECONDS:      # also false for nan
            self.msg = f"seconds must be a number from 0 to {MAX_SECONDS}"
            return False
        # Jobs written for the 2011 upq enqueue themselves in check(); upq still
        # allows it (returning True without this call would do the same).
        self.enqueue_job()
        return True

    def run(self):
        """Sleep in small steps so that a `cancel` takes effect quickly."""
        seconds = float(self.jobdata.get("seconds", "1"))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.cancelled:               # set by upq on `cancel <jobid>`
                self.msg = "cancelled"
                return False
            time.sleep(min(STEP, max(0.0, deadline - time.monotonic())))
        self.msg = f"slept {seconds:g} s"
        return True
