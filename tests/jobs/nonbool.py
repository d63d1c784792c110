"""Test job: run() returns something that is not a bool (`kind`: str, none or int)."""
from upqjob import UpqJob


class Nonbool(UpqJob):
    def run(self):
        kind = self.jobdata.get("kind", "str")
        self.msg = "this msg must not count as success"
        return {"str": "yes", "none": None, "int": 1}[kind]
