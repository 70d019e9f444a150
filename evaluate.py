"""Evaluation: a model or a baseline policy plays held-out seeds; writes results.json and a GIF.

    python evaluate.py --config recipes/tiny-smolvlm/pong/evaluate.yaml --model data/.../checkpoint
    python evaluate.py --policy random --episodes 10 --output-dir data/reference/random
    python evaluate.py --model data/models/tiny-smolvlm --probe vision ...   # can the model see?
"""

from vlmrl.cli import parse, run
from vlmrl.configs import EvaluateArguments
from vlmrl.evaluation import format_results


def main(args: EvaluateArguments) -> dict:
    from vlmrl.distributed import process_state
    from vlmrl.evaluation import evaluate

    results = evaluate(args)
    if not process_state().is_main_process:  # under accelerate launch: the main process reports and pushes
        return results
    print(format_results(results))
    if "probe" in results:
        for question, score in results["probe"].items():
            if isinstance(score, dict) and "accuracy" in score:
                print(f"probe {question}: accuracy {score['accuracy']:.3f} (chance {score['chance']:.3f})")
    print(f"results written to {args.output_dir}/results.json")
    if args.push_to_hub and args.max_steps is not None:
        print(f"note: not pushed to {args.push_to_hub}: a capped evaluation (--max-steps) is not the protocol's score")
    elif args.push_to_hub:
        from vlmrl.hub import publish_evaluation

        publish_evaluation(args.model if args.policy == "model" else None, args.push_to_hub,
                           f"{args.output_dir}/results.json", revision=args.hub_revision)
    return results


def cli(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default: sys.argv) parsed and run; a user's mistake is one line and exit 2."""
    run(lambda: main(*parse((EvaluateArguments,), argv, prog="evaluate.py")))


if __name__ == "__main__":
    cli()
