"""What the entry points share: parsing a recipe plus flags, and turning user errors into messages."""

from __future__ import annotations

import sys
from collections.abc import Callable


def parse(dataclass_types: tuple, argv: list[str] | None = None, defaults: dict | None = None):
    """TrlParser: ``--config recipe.yaml`` then CLI overrides (both --max-steps and --max_steps).

    ``defaults`` replace the dataclasses' defaults; a recipe or a flag still overrides them.
    """
    from trl import TrlParser

    parser = TrlParser(dataclass_types)
    if defaults:
        parser.set_defaults(**defaults)
    if argv is not None:
        old, sys.argv = sys.argv, [sys.argv[0], *argv]
        try:
            return parser.parse_args_and_config()
        finally:
            sys.argv = old
    return parser.parse_args_and_config()


USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def run(main: Callable[[], object]) -> None:
    """Calls ``main``; a mistake the user can fix prints one line and exits 2, not a traceback."""
    from vlmrl.hub import HubPushError

    try:
        main()
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
