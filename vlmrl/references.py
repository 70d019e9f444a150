"""Where a phase reads its input: a local folder or a Hub dataset, ``user/name[:config][@revision]``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import (
    constants,
)

if TYPE_CHECKING:
    from datasets import Dataset



# user/name, then an optional :config and @revision (a revision may hold slashes: refs/pr/1).
_REFERENCE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<revision>[\w./-]+))?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------------------------------------- references


def parse_dataset_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``user/name[:config][@revision]`` -> (repo id, config, revision); a local path -> (path, None, None)."""
    if Path(reference).expanduser().exists():
        return reference, None, None
    match = _REFERENCE.match(reference)
    if match is None:
        return reference, None, None
    return match["repo"], match["config"], match["revision"]


def hub_id(reference: str) -> str | None:
    """The Hub repo id a reference names, or None for a local path."""
    repo, _, _ = parse_dataset_reference(reference)
    return repo if _REFERENCE.match(repo) and not Path(repo).expanduser().exists() else None


def hub_repo_id(prefix: str, kind: str) -> str:
    """The repo a phase publishes to under ``HUB=user/prefix``: ``-episodes``, ``-reflections``, or the model."""
    suffixes = {"episodes": "-episodes", "reflections": "-reflections", "checkpoint": "", "model": ""}
    if kind not in suffixes:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {sorted(suffixes)}")
    return prefix.rstrip("/") + suffixes[kind]


def load_dataset_reference(reference: str) -> Dataset:
    """A phase's input from a local folder or ``user/name[:config][@revision]`` on the Hub."""
    from vlmrl.data import load_any

    path, config, revision = parse_dataset_reference(reference)
    try:
        return load_any(path, config=config, revision=revision)
    except FileNotFoundError as err:
        if hub_offline() and hub_id(reference):
            raise FileNotFoundError(
                f"{err} (HF_HUB_OFFLINE=1 is set: only a Hub dataset already in the local cache can be read; "
                "unset it, or pass a local folder)"
            ) from None
        raise




def hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is now (huggingface_hub reads it once, at import; a user may set it later)."""
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE
