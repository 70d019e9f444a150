"""Train and evaluate a classic-RL baseline (SB3 PPO) at several agent-step budgets.

    python baselines.py --algo ppo --steps 100000 --seeds 3
"""

from vlmrl.cli import parse, run
from vlmrl.rl_baseline import BaselineConfig, main

if __name__ == "__main__":
    run(lambda: main(*parse((BaselineConfig,))))
