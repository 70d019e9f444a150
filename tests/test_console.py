"""The installed ``vlmrl`` command: each subcommand is its root script's (or the loop's) main."""

import sys
from pathlib import Path

import pytest

from vlmrl import console

ROOT = Path(__file__).resolve().parent.parent


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        console.main([*argv, "--help"])
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


def test_the_command_is_installed_as_vlmrl():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vlmrl": "vlmrl.console:main"}


@pytest.mark.parametrize("command", ["collect", "reflect", "train", "evaluate"])
def test_each_phase_help_lists_its_flags_and_config(capsys, monkeypatch, command):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the subcommand sets its prog name there
    out = _help(capsys, command)
    assert out.startswith(f"usage: vlmrl {command}") and "--config RECIPE.yaml" in out
    assert {"collect": "--teacher_mix", "reflect": "--reflector", "train": "--reflections",
            "evaluate": "--video_episodes"}[command] in out


def test_loop_commands_and_the_overview(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert "--exp" in _help(capsys, "report") and "phase" in _help(capsys, "experiment")
    overview = _help(capsys)
    assert all(name in overview for name in ("collect", "reflect", "train", "evaluate", "experiment", "report"))
    with pytest.raises(SystemExit) as exit_:
        console.main(["play"])
    assert exit_.value.code == 2 and "unknown command 'play'" in capsys.readouterr().err
