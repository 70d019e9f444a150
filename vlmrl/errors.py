"""Errors the entry points turn into one-line messages and exit codes (``vlmrl.cli.run``)."""

from __future__ import annotations

import errno
from pathlib import Path


class UsageError(ValueError):
    """A mistake in a script's flags or recipe, found before anything was done."""


# Mistakes a user can fix (a bad flag, a missing file, an unwritable folder): one line, exit 2.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)

_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}
# How libraries that wrap the OS error (torch's zip writer, safetensors' Rust writer) say the same.
# torch's zip writer says only "file write failed" (no errno): in practice a full or vanished disk.
_DISK_WORDS = ("No space left on device", "StorageFull", "os error 28", "Read-only file system", "os error 30",
               "Disk quota exceeded", "file write failed")


def disk_error(err: BaseException) -> str | None:
    """A one-line message when ``err`` is a full, over-quota or read-only disk (a thing the user fixes),
    else None. What finished is kept: the message says to free space and run the same command again."""
    reason = None
    seen: BaseException | None = err
    while seen is not None and reason is None:  # the OS error may be the cause of a library's error
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            reason = _DISK_ERRNOS[seen.errno]
            where = f" writing {seen.filename}" if seen.filename else ""
            reason += where
        elif any(word in str(seen) for word in _DISK_WORDS):
            reason = next(w for w in _DISK_WORDS if w in str(seen)).lower()
        seen = seen.__cause__ or seen.__context__
    if reason is None:
        return None
    return (f"{reason}: free space (or choose a writable --output-dir) and run the same command again; "
            "finished work is kept and a half-written file is redone")


class HubPushError(Exception):
    """A push to the Hub failed; the local copy is intact and ``retry_command`` pushes it again."""

    def __init__(self, what: str, local_path: str | Path | None, retry_command: str, reason: str):
        self.what, self.retry_command, self.reason = what, retry_command, reason
        self.local_path = str(local_path) if local_path is not None else None
        kept = f"The local copy at {local_path} is intact" if local_path is not None else "Nothing local was changed"
        super().__init__(f"{what} failed: {reason}\n{kept}; nothing was lost. Retry the push with:\n  {retry_command}")
