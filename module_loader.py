"""Load a job class from <jobs_dir>/<name>.py by path, turning every failure into one clear line.

Only the daemon calls this, at start-up and on reload, for jobs enabled in the
config; nothing is ever imported because a client asked for it.

A job module is loaded by its file path under the private name ``upq_jobs.<name>``,
so a job called ``os`` or ``json`` neither shadows nor is shadowed by the standard
library. ``sys.path`` is left alone: helpers a job imports must be importable from
the project's own import path (e.g. the project folder), not from ``jobs_dir``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types

from upqerrors import ModuleLoadError
from upqproto import JOB_NAME_RE, RESERVED_NAMES

__all__ = ["JOB_NAME_RE", "RESERVED_NAMES", "ModuleLoadError", "job_name_problem", "class_name_for",
           "load_job_class"]
PRIVATE_PACKAGE = "upq_jobs"


def job_name_problem(name: str) -> str | None:
    """Why name cannot be a job type, or None; shared by config, loader and server."""
    if not JOB_NAME_RE.match(name):
        return f"job name {name!r} must match {JOB_NAME_RE.pattern}"
    if name in RESERVED_NAMES:
        return f"{name!r} is a built-in command, not a job name"
    return None


def class_name_for(name: str) -> str:
    """The class a job module must define: first letter upper-cased (my_job -> My_job)."""
    return name[:1].upper() + name[1:]


def load_job_class(jobs_dir: str, name: str) -> type:
    """Import <jobs_dir>/<name>.py afresh and return its UpqJob subclass."""
    # Imported here, not at the top: parseconfig imports this module for the name
    # rules and must not pull in the job machinery (nor risk an import cycle).
    from upqjob import UpqJob

    if problem := job_name_problem(name):
        raise ModuleLoadError(f"job {name!r}: {problem}")
    path = os.path.join(os.path.abspath(jobs_dir), name + ".py")
    if not os.path.isfile(path):
        raise ModuleLoadError(f"job {name!r}: {path} not found")
    real_dir, real_path = os.path.realpath(jobs_dir), os.path.realpath(path)
    if os.path.commonpath([real_dir, real_path]) != real_dir:
        raise ModuleLoadError(f"job {name!r}: {path} leads to {real_path}, outside {real_dir}")

    module = _execute(name, real_path)
    class_name = class_name_for(name)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, UpqJob) and cls is not UpqJob):
        raise ModuleLoadError(f"job {name!r}: {path} has no class {class_name} derived from UpqJob")
    return cls


def _execute(name: str, path: str) -> types.ModuleType:
    """Run the module's code under its private name; any failure, even sys.exit(), is reported."""
    module_name = f"{PRIVATE_PACKAGE}.{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModuleLoadError(f"job {name!r}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered (with a parent package) so dataclasses, pickle and tracebacks can find it.
    _ensure_private_package()
    sys.modules[module_name] = module
    try:
        # Compiled from the source every time, never from a .pyc: a reload right after
        # a same-size edit must not run the old code (pyc checks are mtime-in-seconds).
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split()) if str(exc) else type(exc).__name__
        raise ModuleLoadError(f"job {name!r}: import failed: {reason}") from exc
    return module


def _ensure_private_package() -> None:
    """An empty parent for upq_jobs.<name>, so importing that dotted name resolves."""
    if PRIVATE_PACKAGE not in sys.modules:
        package = types.ModuleType(PRIVATE_PACKAGE, "Job modules loaded by upq's module_loader.")
        package.__path__ = []
        sys.modules[PRIVATE_PACKAGE] = package
