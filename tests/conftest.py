"""Shared fixtures: a random-init tiny model built once per test session, offline."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a seeded, random-init tiny SmolVLM (perception doesn't matter where this is used)."""
    from vlmrl.tiny_model import main

    path = tmp_path_factory.mktemp("models") / "tiny-smolvlm"
    main(["--output-dir", str(path), "--no-pretrain"])
    return str(path)


@pytest.fixture(scope="session")
def pong_actions() -> list[str]:
    return ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
