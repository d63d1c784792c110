"""upq installs like a Python program: a wheel with only upq's modules, and the `upq` and
`upq-cli` commands working from a fresh virtualenv, away from the clone."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DEFAULT_JOBS, ROOT, Daemon, wait_for

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIM = "upq-cli"    # upq-cli.py: the clone's way to run upqcli; the wheel has the command instead


def top_level_modules() -> set[str]:
    """Every *.py at the top of the clone, except the upq-cli.py shim."""
    return {p.stem for p in ROOT.glob("*.py")} - {SHIM}


def test_py_modules_lists_every_top_level_module() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["py-modules"])
    missing, extra = top_level_modules() - listed, listed - top_level_modules()
    assert not missing, f"add these to [tool.setuptools] py-modules in pyproject.toml: {sorted(missing)}"
    assert not extra, f"py-modules names modules that do not exist: {sorted(extra)}"


def test_wheel_builds_from_the_pinned_build_system() -> None:
    requires = PYPROJECT["build-system"]["requires"]
    assert requires and all("==" in r for r in requires), f"pin [build-system] requires exactly: {requires}"
    test_pins = set(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert set(requires) <= test_pins, "make test installs the build system too (the wheel is built offline)"


@pytest.fixture(scope="module")
def installed() -> Iterator[tuple[Path, Path]]:
    """(the wheel, the bin folder of a fresh virtualenv that pip-installed it)."""
    tmp = Path(tempfile.mkdtemp(prefix="upq-inst-", dir="/tmp"))
    try:
        src = tmp / "src"
        # a copy, so the build's egg-info and build/ stay out of the clone
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "__pycache__", ".pytest_cache", ".hypothesis", "build", "*.egg-info",
            "debian", "man", "dist"))
        out = tmp / "dist"
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(out), str(src)], timeout=180)
        wheel = next(out.glob("upq-*.whl"))
        venv = tmp / "venv"
        run([sys.executable, "-m", "venv", str(venv)], timeout=120)
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             str(wheel)], timeout=300)
        yield wheel, venv / "bin"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_holds_the_modules_and_nothing_else(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {f"{m}.py" for m in top_level_modules()}, sorted(tops)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "upq = upq:main" in text and "upq-cli = upqcli:main" in text, text


def test_installed_upq_and_upq_cli_serve_from_a_fresh_virtualenv(installed: tuple[Path, Path]) -> None:
    _, bin_dir = installed
    work = Path(tempfile.mkdtemp(prefix="upq-", dir="/tmp"))
    try:
        daemon = Daemon(work, "sqlite:///./upq.db", DEFAULT_JOBS)
        checked = run([str(bin_dir / "upq"), "--check-config", "-c", str(daemon.cfg)], timeout=60, cwd="/")
        assert "OK" in checked.stdout, checked.stdout
        # no -c: both commands find ./upq.cfg in their working folder, as a clone does
        out = open(work / "stderr.log", "ab")
        daemon.proc = subprocess.Popen([str(bin_dir / "upq")], cwd=work, stdout=out, stderr=out)
        out.close()
        try:
            wait_for(daemon._up, 30, f"the installed upq to answer ping ({daemon.stderr()[-2000:]})")
            ping = run([str(bin_dir / "upq-cli"), "ping"], timeout=30, cwd=work)
            assert ping.stdout.strip() == "ACK pong"
            done = run([str(bin_dir / "upq-cli"), "--wait", "hello", "name:wheel"], timeout=60, cwd=work)
            assert '"state": "done"' in done.stdout or '"state":"done"' in done.stdout, done.stdout
            # the daemon ran the installed modules, not the clone's
            where = run([str(bin_dir / "python"), "-c", "import upq; print(upq.__file__)"], timeout=30, cwd="/")
            assert str(bin_dir.parent) in where.stdout, where.stdout
            assert daemon.stop() == 0
        finally:
            daemon.kill_if_running()
    finally:
        shutil.rmtree(work, ignore_errors=True)
