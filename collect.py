"""The trial phase: a model (or a baseline policy) plays episodes, recorded as a HF dataset.

    python collect.py --config recipes/tiny-smolvlm/pong/collect.yaml --episodes 5
    python collect.py --policy random --episodes 10 --output-dir data/random
    accelerate launch --multi_gpu --num_processes 2 collect.py ...   # each process its share (CPU or GPU)
"""

from vlmrl.cli import parse, run
from vlmrl.collection import collect, format_summary
from vlmrl.configs import CollectArguments


def main(args: CollectArguments) -> dict:
    from vlmrl.distributed import process_state

    summary = collect(args)
    if not process_state().is_main_process:  # under accelerate launch: the main process reports and pushes
        return summary
    print(format_summary(summary))
    print(f"episodes written to {args.output_dir}")
    if args.push_to_hub:
        from vlmrl.hub import push_dataset_dir

        push_dataset_dir(args.output_dir, args.push_to_hub, config_name=f"iteration-{args.iteration}")
    return summary


def cli(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default: sys.argv) parsed and run; a user's mistake is one line and exit 2."""
    run(lambda: main(*parse((CollectArguments,), argv, prog="collect.py")))


if __name__ == "__main__":
    cli()
