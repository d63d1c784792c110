"""Poison test job: its constructor raises; with `where:worker` only when a worker builds it
(the submission's check passes, the stored job then cannot be built)."""
from upqjob import UpqJob


class Initraiser(UpqJob):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.jobdata.get("where") != "worker" or self.jobid is not None:
            raise RuntimeError("poison: __init__ refuses")

    def run(self):
        return True
