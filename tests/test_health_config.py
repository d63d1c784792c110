"""The config keys of issue 16: keep_* durations, max_interrupted and max_queued."""
from __future__ import annotations

from pathlib import Path

import pytest

from inifile import duration
from parseconfig import load_config
from upqerrors import ConfigError

BASE = "[paths]\nsocket = ./s\njobs_dir = ./j\n"


def _load(tmp_path: Path, text: str):
    p = tmp_path / "upq.cfg"
    p.write_text(BASE + text)
    return load_config(str(p))


@pytest.mark.parametrize("raw,seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600),
                                         ("7d", 604800), ("1.5h", 5400), ("0", 0), ("2S", 2)])
def test_durations_take_s_m_h_d(raw: str, seconds: float) -> None:
    assert duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "h", "-1s", "1w", "nan", "inf", "1 d x", "1hh"])
def test_bad_durations_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        duration(raw)


def test_defaults_and_per_type_overrides(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "[job a]\nenabled = true\n[job b]\nenabled = true\nkeep_done = 1h\n"
                          "max_interrupted = 0\nmax_queued = 5\n")
    assert (cfg.server.keep_done, cfg.server.keep_failed, cfg.server.keep_cancelled) == (604800, 2592000, 604800)
    assert cfg.server.max_interrupted == 3
    a, b = cfg.jobs["a"], cfg.jobs["b"]
    assert (a.keep_done, a.max_interrupted, a.max_queued) == (None, None, 0)
    assert (b.keep_done, b.keep_failed, b.max_interrupted, b.max_queued) == (3600, None, 0, 5)
    from upqcrashloop import interrupt_cap
    from upqretention import keep_for
    from upqstates import State
    assert keep_for(cfg, b, State.DONE) == 3600 and keep_for(cfg, b, State.FAILED) == 2592000
    assert interrupt_cap(cfg, "a") == 3 and interrupt_cap(cfg, "b") == 0 and interrupt_cap(cfg, "zz") == 3


def test_bad_values_name_section_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, "[server]\nkeep_done = 7w\nmax_interrupted = -1\n"
                        "[job a]\nenabled = true\nkeep_failed = soon\nmax_queued = x\n")
    text = str(exc.value)
    for part in ("[server] keep_done", "[server] max_interrupted", "[job a] keep_failed", "[job a] max_queued"):
        assert part in text, text
