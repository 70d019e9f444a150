"""Train and evaluate a classic-RL baseline (SB3 PPO) at several agent-step budgets.

    python baselines.py --algo ppo --steps 100000 --seeds 3
"""

from vlmrl.cli import parse, run
from vlmrl.rl_baseline import BaselineConfig, main


def cli(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default: sys.argv) parsed and run; a user's mistake is one line and exit 2."""
    run(lambda: main(*parse((BaselineConfig,), argv, prog="baselines.py")))


if __name__ == "__main__":
    cli()
