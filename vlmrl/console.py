"""The ``vlmrl`` command: ``vlmrl collect|reflect|train|evaluate|experiment|report [flags]``.

Each subcommand runs the same ``main`` as its root script (``vlmrl collect ...`` is ``python collect.py
...``, ``vlmrl report --exp x`` is ``python -m vlmrl.experiment report --exp x``), so no logic lives
here. The phase scripts sit at the repository root, as the loop itself runs them
(``vlmrl.experiment``): the command works from an editable install (``pip install -e .``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "collect": "the trial phase: a model or a baseline policy plays episodes (collect.py)",
    "reflect": "the reflection phase: corrections of the poor steps (reflect.py)",
    "train": "the fine-tuning phase: TRL SFT on the reflections (train.py)",
    "evaluate": "held-out episodes: results.json, videos (evaluate.py)",
}
LOOP = {
    "experiment": "one phase of an iteration, a summary or a report (python -m vlmrl.experiment)",
    "report": "an experiment's table, learning curve and report.html (make report)",
}


def usage() -> str:
    lines = ["usage: vlmrl <command> [flags]   (vlmrl <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, text in {**SCRIPTS, **LOOP}.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatches ``argv`` (default: the command line) to the subcommand's main."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in SCRIPTS:
        script = ROOT / f"{command}.py"
        if not script.is_file():
            print(f"error: {script} not found: `vlmrl {command}` runs the repository's {command}.py; "
                  "install the project from its checkout (pip install -e .)", file=sys.stderr)
            sys.exit(2)
        sys.argv = [f"vlmrl {command}", *rest]  # the prog name --help and error lines show
        # Run as __main__, as `python collect.py` does (runpy.run_path would set argv[0] to the file's path).
        spec = importlib.util.spec_from_file_location("__main__", script)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    elif command in LOOP:
        from vlmrl import experiment

        sys.argv = ["vlmrl" if command == "report" else "vlmrl experiment", *rest]
        experiment.run(lambda: experiment.main(["report", *rest] if command == "report" else rest))
    else:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
