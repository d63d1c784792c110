"""Test job for process isolation: `how` = segv | exit | sleep | alloc | spin | spawn | ignorecancel
| alive | ok | retry; records its start (and the pid it ran in)."""
import ctypes
import os
import signal
import subprocess
import sys
import time

from upqjob import UpqJob


class Crasher(UpqJob):
    def run(self):
        how = self.jobdata.get("how", "ok")
        self._record("crasher")
        if how == "segv":
            ctypes.string_at(0)
        elif how == "exit":
            os._exit(int(self.jobdata.get("code", "3")))
        elif how == "sleep":
            time.sleep(float(self.jobdata.get("seconds", "30")))
        elif how == "alloc":
            hog = []
            while True:
                hog.append(bytearray(16 << 20))
        elif how == "spin":
            while True:
                pass
        elif how == "spawn":
            # a child that ignores SIGTERM, in the worker's process group
            child = subprocess.Popen([sys.executable, "-c",
                                      "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
            self._record(f"child{child.pid}")
            time.sleep(300)
        elif how == "ignorecancel":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(300)
        elif how == "alive":
            # records "alive" every 50 ms for `seconds` (default 300): when the run was last alive
            deadline = time.monotonic() + float(self.jobdata.get("seconds", "300"))
            while time.monotonic() < deadline:
                self._record("alive")
                time.sleep(0.05)
        elif how == "retry":
            if self.attempt < 2:
                return self.retry("again", delay=0)
        self.msg = f"ran in {os.getpid()} uid {os.getuid()}"
        self.result = {"pid": os.getpid(), "uid": os.getuid(), "attempt": self.attempt}
        return True

    def _record(self, event):
        fd = os.open(self.paths["records"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.write(fd, f"{event} {self.jobid} {self.attempt} {time.time():.6f} {os.getpid()}\n".encode())
        os.close(fd)
