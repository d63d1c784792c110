"""Without -c, upq and upq-cli use ./upq.cfg when it exists, else /etc/upq/upq.cfg."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import upq
import upqcli
from cfgpath import LOCAL_CONFIG, SYSTEM_CONFIG, config_or_default, default_config


def test_local_config_wins_when_it_exists() -> None:
    assert default_config(exists=lambda p: p == LOCAL_CONFIG) == LOCAL_CONFIG


def test_system_config_when_there_is_no_local_one() -> None:
    assert default_config(exists=lambda p: False) == SYSTEM_CONFIG == "/etc/upq/upq.cfg"


def test_a_named_config_is_used_as_given() -> None:
    assert config_or_default("/srv/x.cfg", exists=lambda p: True) == "/srv/x.cfg"
    assert config_or_default("", exists=lambda p: False) == SYSTEM_CONFIG


def test_daemon_without_c_reads_the_local_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert upq.parse_args([]).config == SYSTEM_CONFIG
    (tmp_path / "upq.cfg").write_text("[paths]\n")
    assert upq.parse_args([]).config == LOCAL_CONFIG
    assert upq.parse_args(["-c", "/x.cfg"]).config == "/x.cfg"


def test_client_without_c_takes_the_socket_of_the_local_config(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "upq.cfg").write_text("[paths]\nsocket = ./var/upq.sock\n")
    assert upqcli.resolve_socket(None, None, {}) == os.path.join(".", "var/upq.sock")


@pytest.mark.skipif(os.path.exists(SYSTEM_CONFIG), reason=f"{SYSTEM_CONFIG} exists on this machine")
def test_client_names_both_places_when_neither_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(upqcli.CliError, match=r"no \./upq\.cfg here, nor /etc/upq/upq\.cfg"):
        upqcli.resolve_socket(None, None, {})


def test_help_says_where_the_default_config_is(capsys: pytest.CaptureFixture[str]) -> None:
    for main in (upq.parse_args, upqcli.main):
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "/etc/upq/upq.cfg" in " ".join(capsys.readouterr().out.split())
