"""The one error tree: every failure a user may read is an UpqError carrying its reason.

At the socket edge (upqserver.answer_line) any UpqError becomes `ERR <reason>`;
at start-up (upq.py) it becomes one line on the terminal. Exceptions that never
reach a user (groupcommit's MergeMismatch, notify's PermanentFailure, the
client's CliError in its own standard-library program) stay private to their
module.
"""
from __future__ import annotations


class UpqError(Exception):
    """Something went wrong that the user is told; `reason` is the text they read."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BadRequest(UpqError):
    """A request line that cannot be understood."""


class UnknownJob(UpqError):
    """No enabled job type of that name, or no job with that id."""


class JobRejected(UpqError):
    """check() refused the submission, or the job's state does not allow the command."""


class DatabaseUnavailable(UpqError):
    """The database cannot be reached or refused the work."""


class NoCommit(DatabaseUnavailable):
    """A write was not committed within the answer deadline; it may still be."""


class QueueStopped(UpqError):
    """The daemon is stopping: a job type's queue hands out no more jobs."""


class ConfigError(UpqError):
    """One or more problems in a config file, one per line."""

    def __init__(self, problems: list[str], partial: object | None = None):
        super().__init__("\n".join(problems))
        self.problems = problems
        self.partial = partial      # the Config that did load, for --check-config to go on checking jobs


class ModuleLoadError(UpqError):
    """A job module that cannot be used; the reason names the job."""


class NodeNameTaken(UpqError):
    """Another live daemon uses this node name."""


class StartupError(UpqError):
    """Start-up cannot go on; the reason is the message for the terminal."""
