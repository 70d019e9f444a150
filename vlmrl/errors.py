"""Errors the entry points turn into one-line messages and exit codes (``vlmrl.cli.run``)."""

from __future__ import annotations

from pathlib import Path

# Mistakes a user can fix (a bad flag, a missing file, an unwritable folder): one line, exit 2.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


class HubPushError(Exception):
    """A push to the Hub failed; the local copy is intact and ``retry_command`` pushes it again."""

    def __init__(self, what: str, local_path: str | Path | None, retry_command: str, reason: str):
        self.what, self.retry_command, self.reason = what, retry_command, reason
        self.local_path = str(local_path) if local_path is not None else None
        kept = f"The local copy at {local_path} is intact" if local_path is not None else "Nothing local was changed"
        super().__init__(f"{what} failed: {reason}\n{kept}; nothing was lost. Retry the push with:\n  {retry_command}")
