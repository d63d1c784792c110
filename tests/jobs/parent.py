"""Test job: submits a child job (type from param `child`, default `hello`) and waits for it."""
from upqjob import UpqJob


class Parent(UpqJob):
    def run(self):
        kind = self.jobdata.get("child", "hello")
        params = {k[6:]: v for k, v in self.jobdata.items() if k.startswith("child.")}
        child = self.submit(kind, params)
        if not child.finished.wait(float(self.jobdata.get("wait", "30"))):
            self.msg = f"child {child.jobid} did not finish in time"
            return False
        self.result = {"child": child.jobid, "child_result": child.result, "child_msg": child.msg}
        self.msg = f"child {child.jobid}: {child.msg}"
        return True
