"""module_loader.load_job_class: a job module is loaded by path, or refused with one clear line."""
import json
import os
import pickle
import sys
from pathlib import Path

import pytest

from module_loader import (
    JOB_NAME_RE, RESERVED_NAMES, ModuleLoadError, job_name_problem, load_job_class,
)
from upqjob import UpqJob

GOOD_JOB = """\
from upqjob import UpqJob

class {cls}(UpqJob):
    def run(self):
        return True
"""


def make_job(jobs_dir: Path, name: str, source: str | None = None) -> Path:
    jobs_dir.mkdir(exist_ok=True)
    path = jobs_dir / f"{name}.py"
    path.write_text(source if source is not None else GOOD_JOB.format(cls=name[0].upper() + name[1:]))
    return path


def load_error(jobs_dir: Path, name: str) -> str:
    with pytest.raises(ModuleLoadError) as info:
        load_job_class(str(jobs_dir), name)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_job_returns_its_upqjob_subclass(tmp_path):
    jobs = tmp_path / "jobs"
    make_job(jobs, "resize")
    cls = load_job_class(str(jobs), "resize")
    assert cls.__name__ == "Resize"
    assert issubclass(cls, UpqJob)
    assert cls("resize", {}, {}, {}).run() is True


def test_class_name_upper_cases_only_the_first_letter(tmp_path):
    jobs = tmp_path / "jobs"
    make_job(jobs, "my_command", GOOD_JOB.format(cls="My_command"))
    assert load_job_class(str(jobs), "my_command").__name__ == "My_command"


def test_job_module_gets_a_private_name_and_its_classes_pickle(tmp_path):
    jobs = tmp_path / "jobs"
    make_job(jobs, "hello", GOOD_JOB.format(cls="Hello") + """
import dataclasses

@dataclasses.dataclass
class Record:
    n: int
""")
    cls = load_job_class(str(jobs), "hello")
    assert cls.__module__ == "upq_jobs.hello"
    assert "hello" not in sys.modules or sys.modules["hello"] is not sys.modules["upq_jobs.hello"]
    record_cls = sys.modules["upq_jobs.hello"].Record
    assert pickle.loads(pickle.dumps(record_cls(3))) == record_cls(3)


def test_loading_again_runs_the_edited_file_even_within_the_same_second(tmp_path):
    jobs = tmp_path / "jobs"
    path = make_job(jobs, "hello", GOOD_JOB.format(cls="Hello") + "VERSION = 1\n")
    stamp = path.stat().st_mtime_ns
    assert load_job_class(str(jobs), "hello").run.__globals__["VERSION"] == 1
    make_job(jobs, "hello", GOOD_JOB.format(cls="Hello") + "VERSION = 2\n")   # same size
    os.utime(path, ns=(stamp, stamp))                                           # same mtime
    assert load_job_class(str(jobs), "hello").run.__globals__["VERSION"] == 2
    assert not (jobs / "__pycache__").exists()


def test_job_called_os_loads_the_jobs_dir_file_not_the_stdlib(tmp_path):
    jobs = tmp_path / "jobs"
    make_job(jobs, "os")
    make_job(jobs, "json")
    assert load_job_class(str(jobs), "os").__name__ == "Os"
    assert load_job_class(str(jobs), "json").__name__ == "Json"
    assert sys.modules["os"] is os and sys.modules["json"] is json
    assert hasattr(os, "getcwd") and hasattr(json, "dumps")


def test_missing_file_names_the_job_and_the_absolute_path(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    assert load_error(jobs, "resize") == f"job 'resize': {jobs}/resize.py not found"


def test_missing_jobs_dir_is_reported_as_missing_file(tmp_path):
    assert load_error(tmp_path / "nowhere", "x") == f"job 'x': {tmp_path}/nowhere/x.py not found"


def test_syntax_error_is_reported_as_import_failure(tmp_path):
    jobs = tmp_path / "jobs"
    make_job(jobs, "x", "def broken(:\n")
    message = load_error(jobs, "x")
    assert message.startswith("job 'x': import failed: SyntaxError: ")
    assert "x.py, line 1" in message


def test_exception_at_import_is_reported_with_type_and_message(tmp_path):
    jobs = tmp_path / "jobs"
    make_job(jobs, "x", "foo\n")
    assert load_error(jobs, "x") == "job 'x': import failed: NameError: name 'foo' is not defined"
    assert "upq_jobs.x" not in sys.modules


def test_import_of_missing_library_is_reported(tmp_path):
    jobs = tmp_path / "jobs"
    make_job(jobs, "x", "import no_such_library_for_upq\n")
    assert load_error(jobs, "x") == ("job 'x': import failed: ModuleNotFoundError: "
                                     "No module named 'no_such_library_for_upq'")


@pytest.mark.parametrize("call, expected", [
    ("sys.exit()", "job 'x': import failed: SystemExit"),
    ("sys.exit(3)", "job 'x': import failed: SystemExit: 3"),
    ("sys.exit('bye')", "job 'x': import failed: SystemExit: bye"),
])
def test_sys_exit_at_import_is_a_load_error_not_an_exit(tmp_path, call, expected):
    jobs = tmp_path / "jobs"
    make_job(jobs, "x", f"import sys\n{call}\n")
    assert load_error(jobs, "x") == expected


def test_missing_class_is_reported(tmp_path):
    jobs = tmp_path / "jobs"
    path = make_job(jobs, "x", "from upqjob import UpqJob\nclass Other(UpqJob):\n    pass\n")
    assert load_error(jobs, "x") == f"job 'x': {path} has no class X derived from UpqJob"


@pytest.mark.parametrize("source", [
    "class X:\n    pass\n",
    "X = 42\n",
    "from upqjob import UpqJob as X\n",
])
def test_class_not_derived_from_upqjob_is_reported(tmp_path, source):
    jobs = tmp_path / "jobs"
    path = make_job(jobs, "x", source)
    assert load_error(jobs, "x") == f"job 'x': {path} has no class X derived from UpqJob"


@pytest.mark.parametrize("name", ["../x", "Os", "a-b", "", "1x", "x.y", "x/y", "_x", "é"])
def test_invalid_names_are_refused_before_touching_the_disk(tmp_path, name):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (tmp_path / "x.py").write_text("raise RuntimeError('must not be imported')\n")
    assert load_error(jobs, name) == f"job {name!r}: job name {name!r} must match ^[a-z][a-z0-9_]*$"


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_reserved_names_are_refused_even_when_the_file_exists(tmp_path, name):
    jobs = tmp_path / "jobs"
    make_job(jobs, name)
    assert load_error(jobs, name) == f"job {name!r}: {name!r} is a built-in command, not a job name"


def test_reserved_names_are_exactly_the_builtin_commands():
    assert RESERVED_NAMES == {"ping", "status", "wait", "cancel", "retry", "list", "list_queue",
                              "stats", "help", "auth", "reload", "schedules", "pause", "resume", "purge",
                              "why", "log"}
    assert all(JOB_NAME_RE.match(name) for name in RESERVED_NAMES)
    assert job_name_problem("hello") is None


def test_symlink_leading_outside_jobs_dir_is_refused(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    outside = tmp_path / "outside.py"
    outside.write_text(GOOD_JOB.format(cls="Evil") + "raise RuntimeError('must not be imported')\n")
    (jobs / "evil.py").symlink_to(outside)
    message = load_error(jobs, "evil")
    assert message == f"job 'evil': {jobs}/evil.py leads to {outside}, outside {jobs}"


def test_symlink_inside_jobs_dir_and_symlinked_jobs_dir_are_accepted(tmp_path):
    real = tmp_path / "real_jobs"
    make_job(real, "impl", GOOD_JOB.format(cls="Alias"))
    (real / "alias.py").symlink_to(real / "impl.py")
    link = tmp_path / "jobs"
    link.symlink_to(real)
    assert load_job_class(str(real), "alias").__name__ == "Alias"
    make_job(real, "hello")
    assert load_job_class(str(link), "hello").__name__ == "Hello"
