"""hello: the smallest useful job. Try `./upq-cli.py hello name:you`."""
from upqjob import UpqJob


class Hello(UpqJob):
    """Greets `name` with the `greeting` from its [job hello] section."""

    def check(self):
        """Runs when the job is submitted: refuse it early if `name` is missing."""
        if "name" not in self.jobdata:
            self.msg = "name missing"     # the client gets: ERR name missing
            return False
        return True                       # upq stores and queues it: ACK <jobid>

    def run(self):
        """Runs later in a worker thread: True means done, False means failed."""
        greeting = self.jobcfg.get("greeting", "Hello")
        self.msg = greeting + " " + self.jobdata["name"]
        self.result = {"greeted": self.jobdata["name"]}   # any JSON value; kept in the database
        return True
