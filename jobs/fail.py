"""fail: a job that always fails, to see what failure looks like.

Try `./upq-cli.py --wait fail reason:"disk on fire"`: the job ends `failed`, the
client exits 1, and `notify_fail` (if configured) reports it.
"""
from upqjob import UpqJob


class Fail(UpqJob):
    """Accepts any parameters (no check() needed), then fails on purpose when it runs."""

    def run(self):
        """Fail with the `reason` parameter in the message."""
        reason = self.jobdata.get("reason") or "no reason given"
        self.msg = "failed on purpose: " + reason
        return False          # False = failed (retried if `retries` allows)
