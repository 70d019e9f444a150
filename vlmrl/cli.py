"""The one way in: every entry point parses through here and runs under ``run``.

``parse`` reads a recipe plus flags with TRL's parser (the phase scripts, ``baselines.py``);
``ArgumentParser`` is argparse for the library's own commands (``python -m vlmrl.<module>``).
Both print a mistake in the arguments as one line and exit 2. A recipe is checked before any of
it is used: a missing file, malformed YAML, an unknown key or a value of the wrong type (``episodes:
2.0``, ``episodes: true``, ``episodes: null``) is such a mistake, named with the file and key.
``run`` calls a main function and turns what a user can fix into one line and exit 2 (a full or
read-only disk included), a failed Hub push into exit 3 (the local copy is kept and the message
names the retry command), and Ctrl-C into exit 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from vlmrl.errors import USER_ERRORS, HubPushError, UsageError, disk_error


def number_pairs(text: str | None, flag: str, shape: str, example: str) -> dict[str, float]:
    """A flag's ``name=number,name=number`` as {name: number}; None or empty gives {}. A pair without ``=``, a name,
    or a finite number, and a name given twice, are a ValueError naming ``flag`` (``shape``, e.g. ``name=weight``,
    and ``example`` say what a pair holds)."""
    pairs: dict[str, float] = {}
    for item in filter(str.strip, (text or "").split(",")):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name.strip() or not math.isfinite(number):
            raise ValueError(f"{flag} takes {shape} pairs separated by commas, e.g. {example}; "
                             f"got {item.strip()!r}")
        if name.strip() in pairs:
            raise ValueError(f"{flag}: {name.strip()!r} is given twice")
        pairs[name.strip()] = number
    return pairs


def _one_line_error(prog: str, message: str) -> NoReturn:
    print(f"error: {message} (see {prog} --help)", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (and exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        _one_line_error(self.prog, message)


def _raise_usage(prog: str, message: str) -> NoReturn:
    # Raised, not exited: ``run`` prints it as one line with exit 2, and ``vlmrl.experiment check`` can
    # collect every phase's mistakes before any phase runs.
    raise UsageError(f"{message} (see {prog} --help)")


def read_recipe(path: str | Path) -> dict:
    """A recipe YAML as a mapping, or a one-line error naming the file (missing, malformed, not a mapping)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"recipe {str(path)!r} is a folder; --config takes one YAML file, e.g. {path}/collect.yaml")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist") from None
    except OSError as err:
        raise UsageError(f"recipe {str(path)!r} cannot be read: {err.strerror or err}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"recipe {str(path)!r} is not valid YAML ({problem} at{where or ' an unknown place'})") \
            from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UsageError(f"recipe {str(path)!r} must be a mapping of settings (key: value), got a "
                         f"{type(config).__name__}")
    return config


def _type_hints(dataclass_types: tuple) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for dataclass_type in dataclass_types:
        try:
            resolved = typing.get_type_hints(dataclass_type)
        except Exception:  # noqa: BLE001 - an unresolvable annotation is simply not checked
            continue
        for f in dataclasses.fields(dataclass_type):
            if f.name in resolved:
                hints[f.name] = resolved[f.name]
    return hints


def _kind_error(value: Any, hint: Any) -> str | None:
    """Why ``value`` (from a recipe) does not fit the field's type ``hint``; None when it fits or when the
    type is too rich to judge here. Strings are left to argparse, which converts (and checks) them like a flag."""
    if isinstance(value, str):
        return None
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else "a value"
        rest = [a for a in args if a is not type(None)]
        return _kind_error(value, rest[0]) if len(rest) == 1 else None
    if value is None:
        return "a value"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "text"
    if typing.get_origin(hint) is list:
        return None if isinstance(value, list) else "a list"
    return None


def check_recipe(config: dict, path: str | Path, dataclass_types: tuple, parser) -> None:
    """Refuses a recipe key no dataclass has, and a value whose type does not fit its field."""
    known = {action.dest for action in parser._actions}
    unknown = sorted(str(k) for k in config if k not in known and k != "env")
    if unknown:
        raise UsageError(f"recipe {str(path)!r}: unknown settings {unknown} (each must be a flag of the script)")
    hints = _type_hints(dataclass_types)
    for key, value in config.items():
        if key in hints:
            problem = _kind_error(value, hints[key])
            if problem:
                shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
                raise UsageError(f"recipe {str(path)!r}: {key} must be {problem}, got {shown}")


def parse(dataclass_types: tuple, argv: list[str] | None = None, defaults: dict | None = None,
          prog: str | None = None):
    """TrlParser: ``--config recipe.yaml`` then CLI overrides (both --max-steps and --max_steps).

    ``defaults`` replace the dataclasses' defaults; a recipe or a flag still overrides them. A mistake
    in the recipe or the flags raises ``UsageError`` (``run`` prints it as one line, exit 2) before
    anything is done; a dataclass's own checks (``__post_init__``) raise ``ValueError`` the same way.
    """
    import os

    from trl import TrlParser

    if sys.argv and sys.argv[0].startswith("vlmrl "):  # run as `vlmrl <command>`: that is its name in messages
        prog = sys.argv[0]
    parser = TrlParser(dataclass_types, prog=prog)
    parser.error = lambda message: _raise_usage(parser.prog, message)
    # --config is read here, before argparse sees the arguments, so --help would not list it otherwise.
    # SUPPRESS: argparse never sets it, and no unknown field reaches the dataclasses.
    parser.add_argument("--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS,
                        help="a recipe: its keys are flags of this script (either spelling) and set their defaults; "
                             "flags given here win")
    if defaults:
        parser.set_defaults(**defaults)
    args = list(sys.argv[1:] if argv is None else argv)
    if args.count("--config") > 1:
        _raise_usage(parser.prog, "--config given more than once")
    if "--config" in args:
        at = args.index("--config")
        if at + 1 >= len(args):
            _raise_usage(parser.prog, "--config needs a recipe file")
        path = args[at + 1]
        del args[at : at + 2]
        config = read_recipe(path)
        check_recipe(config, path, dataclass_types, parser)
        env = config.pop("env", {}) or {}
        if not isinstance(env, dict):
            raise UsageError(f"recipe {path!r}: env must be a mapping of environment variables")
        for key, value in env.items():
            os.environ[str(key)] = str(value)
        parser.set_defaults_with_config(**config)
    return parser.parse_args_into_dataclasses(args=args)


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
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        message = disk_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    if isinstance(code, int) and not isinstance(code, bool):
        sys.exit(code)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n")) if not isinstance(err, HubPushError) else str(err)
