"""Carries out one request line: a built-in command of upqproto.COMMANDS, or a job submission.

`Dispatcher.answer` returns the answer line, or for a submission a future that
resolves once the job is committed; every failure is raised as an UpqError and
turned into `ERR <reason>` by the socket edge (upqserver.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import upqproto as proto
from upqcontrol import Control
from upqerrors import BadRequest, ConfigError, UpqError
from upqproto import Request
from upqqueuemngr import QueueManager
from upqsubmit import Submitted, Submitter

if TYPE_CHECKING:
    from upqbulk import Admin

Gone = Callable[[], bool]           # has the client hung up? (checked while `wait` blocks)
Handler = Callable[[Request, Gone], str]


class Dispatcher:
    """Request line -> answer; one per daemon, shared by every connection."""

    def __init__(self, submitter: Submitter, control: Control, manager: QueueManager,
                 reload: Callable[[], list[str]], admin: "Admin | None" = None,
                 schedules: Callable[[], list[dict[str, Any]]] = lambda: [],
                 on_submit: Callable[[], None] = lambda: None):
        self.admin = admin
        self.submitter = submitter
        self.control = control
        self.manager = manager
        self.reload = reload
        self.schedules_of = schedules
        self.on_submit = on_submit          # counts submissions (for /metrics)
        self.handlers: dict[str, Handler] = {
            "ping": self.ping, "status": self.status, "wait": self.wait, "list": self.list,
            "list_queue": self.list, "stats": self.stats, "help": self.help, "cancel": self.cancel,
            "retry": self.retry, "reload": self.reload_config, "why": self.why, "log": self.log,
            "pause": self.pause, "resume": self.resume, "purge": self.purge,
        }
        self.handlers["schedules"] = self.schedules
        # every command of the table is served here, but `auth`, which only the TCP edge knows
        assert set(self.handlers) == proto.COMMAND_NAMES - {"auth"}, "upqproto.COMMANDS and the handlers differ"

    def answer(self, line: str, gone: Gone) -> "str | Submitted":
        """One request line -> its answer line, or a future for a submission still committing."""
        req = proto.parse_request(line)
        handler = self.handlers.get(req.command)
        if handler is not None:
            return handler(req, gone)
        if req.command in proto.RESERVED_NAMES:
            raise BadRequest(f"{req.command}: not available on this connection")
        proto.check_job_name(req.command)
        options, args = proto.split_options(req.args)
        self.on_submit()
        return self.submitter.submit(req.command, Request(req.command, args).params(),
                                     delay=proto.parse_delay(options), priority=proto.parse_priority(options))

    # -- built-in commands -------------------------------------------------
    def ping(self, req: Request, gone: Gone) -> str:
        return proto.ack("pong")

    def status(self, req: Request, gone: Gone) -> str:
        row, children = self.control.status(proto.jobid_arg(req))
        return proto.job_answer(row, children=children)

    def cancel(self, req: Request, gone: Gone) -> str:
        jobname = proto.type_arg(req)
        if jobname is not None:
            return proto.ack(f"{self._admin().cancel_type(jobname)} cancelled")
        return proto.job_answer(self.control.cancel(proto.jobid_arg(req)))

    def retry(self, req: Request, gone: Gone) -> str:
        jobname = proto.type_arg(req)
        if jobname is not None:
            return proto.ack(f"{self._admin().retry_type(jobname)} requeued")
        return proto.job_answer(self.control.retry(proto.jobid_arg(req)))

    def _admin(self) -> "Admin":
        if self.admin is None:
            raise BadRequest("not available on this daemon")
        return self.admin

    def pause(self, req: Request, gone: Gone) -> str:
        self._admin().pause(proto.jobname_arg(req))
        return proto.ack()

    def resume(self, req: Request, gone: Gone) -> str:
        self._admin().resume(proto.jobname_arg(req))
        return proto.ack()

    def purge(self, req: Request, gone: Gone) -> str:
        state, older, jobname = proto.purge_args(req)
        return proto.ack(f"{self._admin().purge(state, older, jobname)} purged")

    def wait(self, req: Request, gone: Gone) -> str:
        jobid, timeout = proto.wait_args(req)
        final = self.control.wait(jobid, timeout, gone)
        if final is None:
            raise UpqError(f"timeout: job {jobid} has not ended")
        return proto.wait_answer(final)

    def list(self, req: Request, gone: Gone) -> str:
        state, limit = proto.list_args(req)
        return proto.ack_json([proto.job_json(row) for row in self.control.list(state, limit)])

    def log(self, req: Request, gone: Gone) -> str:
        jobid, attempt = proto.log_args(req)
        row, _ = self.control.status(jobid)           # UnknownJob for a job that does not exist
        if attempt is not None and not 1 <= attempt <= max(1, row.attempts):
            raise BadRequest(f"job {jobid} has had {row.attempts} attempt(s); there is no attempt {attempt}")
        return proto.ack_json(self.manager.joblogs.read(jobid, row.attempts if attempt is None else attempt))

    def stats(self, req: Request, gone: Gone) -> str:
        return proto.ack_json(self.control.stats())

    def why(self, req: Request, gone: Gone) -> str:
        from upqwhy import why
        return proto.ack_json(why(proto.jobid_arg(req), self.manager, self.control.db,
                                  self.manager.config.server.node_timeout))

    def reload_config(self, req: Request, gone: Gone) -> str:
        proto.no_args(req)
        try:
            changes = self.reload()
        except UpqError as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [exc.reason]
            raise UpqError(f"reload failed, the running config is kept: {'; '.join(problems)}") from exc
        return proto.ack("reloaded: " + ("; ".join(changes) if changes else "no job changes"))

    def schedules(self, req: Request, gone: Gone) -> str:
        proto.no_args(req)
        return proto.ack_json(self.schedules_of())

    def help(self, req: Request, gone: Gone) -> str:
        return proto.help_answer({name: jt.config.concurrent for name, jt in self.manager.types.items()})
