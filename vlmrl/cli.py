"""The one way in: every entry point parses through here and runs under ``run``.

``parse`` reads a recipe plus flags with TRL's parser (the phase scripts, ``baselines.py``);
``ArgumentParser`` is argparse for the library's own commands (``python -m vlmrl.<module>``).
Both print a mistake in the arguments as one line and exit 2. ``run`` calls a main function and
turns what a user can fix into one line and exit 2, a failed Hub push into exit 3 (the local copy
is kept and the message names the retry command), and Ctrl-C into exit 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from vlmrl.errors import USER_ERRORS, HubPushError


def _one_line_error(prog: str, message: str) -> NoReturn:
    print(f"error: {message} (see {prog} --help)", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (and exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        _one_line_error(self.prog, message)


def parse(dataclass_types: tuple, argv: list[str] | None = None, defaults: dict | None = None):
    """TrlParser: ``--config recipe.yaml`` then CLI overrides (both --max-steps and --max_steps).

    ``defaults`` replace the dataclasses' defaults; a recipe or a flag still overrides them.
    """
    from trl import TrlParser

    parser = TrlParser(dataclass_types)
    parser.error = lambda message: _one_line_error(parser.prog, message)
    # TrlParser reads --config itself, before argparse sees the arguments, so --help would not list it.
    # SUPPRESS: argparse never sets it, and no unknown field reaches the dataclasses.
    parser.add_argument("--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS,
                        help="a recipe: its keys are flags of this script (either spelling) and set their defaults; "
                             "flags given here win")
    if defaults:
        parser.set_defaults(**defaults)
    if argv is not None:
        old, sys.argv = sys.argv, [sys.argv[0], *argv]
        try:
            return parser.parse_args_and_config()
        finally:
            sys.argv = old
    return parser.parse_args_and_config()


def run(main: Callable[[], object]) -> None:
    """Calls ``main``; a mistake the user can fix prints one line and exits 2, not a traceback.

    A ``main`` that returns an int returns it as the exit code.
    """
    try:
        code = main()
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    if isinstance(code, int) and not isinstance(code, bool):
        sys.exit(code)
