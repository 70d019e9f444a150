"""Train and evaluate a classic-RL baseline (SB3 PPO) at several agent-step budgets."""

from trl import TrlParser

from vlmrl.rl_baseline import BaselineConfig, main

if __name__ == "__main__":
    (config,) = TrlParser((BaselineConfig,)).parse_args_and_config()
    main(config)
