"""Poison test job: returns a result that is not plain JSON; `kind` picks which."""
import datetime

from upqjob import UpqJob


def _odd(kind):
    if kind == "object":
        return {"o": object()}
    if kind == "set":
        return {"s": {1, 2, 3}}
    if kind == "bytes":
        return {"b": b"\xff\x00raw"}
    if kind == "datetime":
        return {"t": datetime.datetime(2030, 1, 2, 3, 4, 5)}
    if kind == "circular":
        loop = []
        loop.append(loop)
        return loop
    if kind == "tuplekey":
        return {(1, 2): "x"}
    if kind == "nan":
        return {"x": float("nan"), "y": float("inf")}
    raise ValueError(kind)


class Oddresult(UpqJob):
    def run(self):
        self.result = _odd(self.jobdata.get("kind", "object"))
        self.msg = "odd result " + self.jobdata.get("kind", "object")
        return True
