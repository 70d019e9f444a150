"""The reflection phase: a reflector looks back at poor steps and writes the corrected action and why.

    python reflect.py --config recipes/tiny-smolvlm/pong/reflect.yaml --episodes data/.../episodes
    python reflect.py --episodes data/episodes --reflector oracle --reflect-on all
"""

from vlmrl.cli import parse, run
from vlmrl.configs import ReflectArguments
from vlmrl.reflection import format_summary, reflect


def main(args: ReflectArguments) -> dict:
    summary = reflect(args)
    print(format_summary(summary))
    print(f"reflections written to {args.output_dir}")
    if args.push_to_hub:
        from vlmrl.hub import push_dataset_dir

        iteration = summary.get("iteration", 0)
        push_dataset_dir(args.output_dir, args.push_to_hub, config_name=f"iteration-{iteration}")
    return summary


def cli(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default: sys.argv) parsed and run; a user's mistake is one line and exit 2."""
    run(lambda: main(*parse((ReflectArguments,), argv, prog="reflect.py")))


if __name__ == "__main__":
    cli()
