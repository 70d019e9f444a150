"""Classic-RL baseline: stable-baselines3 PPO on the v5 protocol, evaluated like our own models.

Training uses the rl-zoo Atari PPO hyper-parameters and SB3's Atari observation wrappers
(grey 84x84, reward clipping, 4-frame stack) on ``gym.make("ALE/Pong-v5")`` itself, so the
emulator protocol is v5's: frameskip 4 and sticky actions 0.25 inside the env. SB3's
``AtariWrapper`` is not used as a whole because on a v5 env its remaining parts would change
the protocol: a second frame skip, no-op starts and a FIRE reset (two extra steps at every
start); with those off it reduces to the ``WarpFrame`` + ``ClipRewardEnv`` used here.
Agent steps are what SB3 counts as timesteps (one per 4 frames). Checkpoints are saved when
training has collected each budget of agent steps, then each is evaluated on the evaluation
protocol of evaluate.py: the seeds of ``eval_seeds``, a plain v5 env, full episodes, real
(unclipped) returns, the RAM-oracle's agreement with the chosen actions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from vlmrl.env import make_env, ram_of
from vlmrl.results import build_results, eval_seeds, game_slug, load_results, write_results

ALGOS = ("ppo",)

# rl-baselines3-zoo hyperparams/ppo.yml, "atari" (n_envs 8, frame_stack 4, CnnPolicy);
# lin_X schedules decay linearly to 0 over the run.
PPO_ATARI_HYPERPARAMS: dict[str, Any] = {
    "n_steps": 128,
    "n_epochs": 4,
    "batch_size": 256,
    "learning_rate": 2.5e-4,
    "clip_range": 0.1,
    "vf_coef": 0.5,
    "ent_coef": 0.01,
}
FRAME_STACK = 4
SCREEN_SIZE = 84


@dataclass
class BaselineConfig:
    """Arguments of baselines.py: which RL algorithm, game, budgets and seeds."""

    algo: str = field(default="ppo", metadata={"help": f"RL algorithm, one of {', '.join(ALGOS)}."})
    game: str = field(default="ALE/Pong-v5", metadata={"help": "ALE game id (v5 protocol)."})
    steps: int = field(
        default=100_000,
        metadata={"help": "Agent steps to train (SB3 timesteps; one agent step = 4 frames)."},
    )
    seeds: int = field(default=3, metadata={"help": "Train seeds 0..seeds-1 (ignored when --seed is given)."})
    seed: int | None = field(default=None, metadata={"help": "Train this one seed only."})
    budgets: str = field(
        default="10000,25000,50000,100000",
        metadata={
            "help": "Comma-separated agent-step budgets to checkpoint and evaluate; --steps is always one, "
            "budgets above it are dropped."
        },
    )
    eval_episodes: int = field(
        default=10, metadata={"help": "Evaluation episodes per checkpoint (seeds eval_seeds(n))."}
    )
    eval_max_steps: int | None = field(
        default=None,
        metadata={"help": "Cap on agent steps per evaluation episode (for smoke tests; None = full episodes)."},
    )
    output_dir: str = field(
        default="data/baselines",
        metadata={"help": "Root folder; runs go to <output_dir>/<algo>/<game-slug>/seed_<s>/budget_<n>/."},
    )
    num_envs: int = field(default=8, metadata={"help": "Parallel training environments (rl-zoo: 8)."})
    stochastic_eval: bool = field(
        default=False,
        metadata={"help": "Sample evaluation actions from the policy instead of taking its argmax."},
    )
    # Measured on a shared 2-core machine: 1 thread trains at ~150 agent steps/s, 2 at ~50
    # (the small CNN's batches don't pay for the threads' contention).
    torch_threads: int | None = field(
        default=1,
        metadata={"help": "torch CPU threads (None = torch's default; 1 is fastest on small CPUs)."},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Retrain a seed whose results already exist instead of reusing them."},
    )

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"--algo {self.algo!r} is not supported; choose one of {', '.join(ALGOS)}")
        if self.steps < 1:
            raise ValueError(f"--steps must be positive, got {self.steps}")
        if self.seed is None and self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        if self.num_envs < 1:
            raise ValueError(f"--num-envs must be at least 1, got {self.num_envs}")
        if self.eval_episodes < 1:
            raise ValueError(f"--eval-episodes must be at least 1, got {self.eval_episodes}")
        if self.eval_max_steps is not None and self.eval_max_steps < 1:
            raise ValueError(f"--eval-max-steps must be positive, got {self.eval_max_steps}")
        self.budget_list  # noqa: B018 - parse now so a bad --budgets fails before any training

    @property
    def budget_list(self) -> list[int]:
        """The sorted checkpoint budgets, never above --steps, always ending with --steps."""
        try:
            budgets = {int(b) for b in str(self.budgets).split(",") if b.strip()}
        except ValueError:
            raise ValueError(
                f"--budgets must be comma-separated integers like 10000,25000, got {self.budgets!r}"
            ) from None
        if any(b < 1 for b in budgets):
            raise ValueError(f"--budgets must be positive, got {self.budgets!r}")
        return sorted({b for b in budgets if b <= self.steps} | {self.steps})

    @property
    def seed_list(self) -> list[int]:
        """The training seeds this run covers."""
        return [self.seed] if self.seed is not None else list(range(self.seeds))


def wrap_observation(env: gym.Env) -> gym.Env:
    """The observation preprocessing shared by training and evaluation: grey 84x84 frames."""
    from stable_baselines3.common.atari_wrappers import WarpFrame

    return WarpFrame(env, width=SCREEN_SIZE, height=SCREEN_SIZE)


def make_training_env(game: str, num_envs: int, seed: int):  # -> VecEnv
    """num_envs v5 envs with the Atari observation wrappers and a 4-frame stack."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    make_env(game).close()  # a bad game id fails here with vlmrl.env's message
    venv = make_vec_env(lambda: make_env(game), n_envs=num_envs, seed=seed, wrapper_class=_clip_and_warp)
    return VecFrameStack(venv, n_stack=FRAME_STACK)


def _clip_and_warp(env: gym.Env) -> gym.Env:
    from stable_baselines3.common.atari_wrappers import ClipRewardEnv

    # Inside the Monitor make_vec_env adds, so the logged episode returns stay unclipped.
    return ClipRewardEnv(wrap_observation(env))


def make_ppo(env, seed: int, tensorboard_dir: Path | None):  # -> PPO
    """SB3 PPO with the CnnPolicy and the rl-zoo Atari hyper-parameters."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import LinearSchedule

    hp = dict(PPO_ATARI_HYPERPARAMS)
    # With fewer envs than rl-zoo's 8 a rollout can be shorter than one mini-batch.
    hp["batch_size"] = min(hp["batch_size"], hp["n_steps"] * env.num_envs)
    hp["learning_rate"] = LinearSchedule(hp["learning_rate"], 0.0, 1.0)
    hp["clip_range"] = LinearSchedule(hp["clip_range"], 0.0, 1.0)
    return PPO(
        "CnnPolicy",
        env,
        seed=seed,
        device="cpu",
        verbose=0,
        tensorboard_log=None if tensorboard_dir is None else str(tensorboard_dir),
        **hp,
    )


def _budget_checkpoints(budgets: list[int], path_for):  # -> BaseCallback
    """A callback that saves the model as each budget of agent steps is reached, then stops."""
    from stable_baselines3.common.callbacks import BaseCallback

    class BudgetCheckpoints(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_index = 0
            self.saved: dict[int, dict[str, float]] = {}
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            while self.next_index < len(budgets) and self.num_timesteps >= budgets[self.next_index]:
                budget = budgets[self.next_index]
                path = path_for(budget)
                path.parent.mkdir(parents=True, exist_ok=True)
                self.model.save(path)
                self.saved[budget] = {
                    "agent_steps": int(self.num_timesteps),
                    "train_wall_s": time.perf_counter() - self.start,
                }
                self.next_index += 1
            # Stop as soon as the last budget is saved: the rest of the rollout would be wasted.
            return self.next_index < len(budgets)

    return BudgetCheckpoints()


def evaluate_sb3_policy(
    model,
    game: str,
    seeds: list[int],
    *,
    max_steps: int | None = None,
    deterministic: bool = True,
) -> dict[str, Any]:
    """Play one episode per seed on a plain v5 env; returns, agent steps, oracle agreement, wall time."""
    from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

    from vlmrl.games import get_game
    from vlmrl.results import agreement_by_phase

    the_game = get_game(game)
    oracle = the_game.oracle() if the_game.has_oracle else None
    env = wrap_observation(make_env(game))
    action_names = list(env.unwrapped.get_action_meanings())
    returns: list[float] = []
    env_steps = 0
    agrees: list[bool] = []
    phases: list[str] = []
    start = time.perf_counter()
    try:
        for seed in seeds:
            # The same stacking as VecFrameStack in training: zeros, then the newest frame last.
            stacker = StackedObservations(1, FRAME_STACK, env.observation_space, "last")
            obs, _ = env.reset(seed=seed)
            stacked = stacker.reset(obs[None])
            ram, prev_ram = ram_of(env), None
            episode_return, steps = 0.0, 0
            while True:
                action, _ = model.predict(stacked, deterministic=deterministic)
                action = int(np.asarray(action).reshape(-1)[0])
                if oracle is not None:
                    agrees.append(the_game.same_class(action_names[action], oracle.decide(ram, prev_ram).action))
                    if the_game.phases:
                        phases.append(the_game.phase(ram, prev_ram))
                obs, reward, terminated, truncated, _ = env.step(action)
                episode_return += float(reward)
                steps += 1
                if terminated or truncated or (max_steps is not None and steps >= max_steps):
                    break
                stacked, _ = stacker.update(obs[None], np.array([False]), [{}])
                prev_ram, ram = ram, ram_of(env)
            returns.append(episode_return)
            env_steps += steps
    finally:
        env.close()
    wall_s = time.perf_counter() - start
    return {
        "returns": returns,
        "env_steps": env_steps,
        "oracle_agreement": None if oracle is None else sum(agrees) / env_steps,
        "oracle_agreement_by_phase": (
            agreement_by_phase(agrees, phases, the_game.phases) if oracle is not None and the_game.phases else None
        ),
        "wall_s": wall_s,
    }


def seed_dir(config: BaselineConfig, seed: int) -> Path:
    """<output_dir>/<algo>/<game-slug>/seed_<s>."""
    return Path(config.output_dir) / config.algo / game_slug(config.game) / f"seed_{seed}"


def run_seed(config: BaselineConfig, seed: int) -> dict[int, dict[str, Any]]:
    """Train one seed through every budget, then evaluate each checkpoint; results by budget."""
    import torch
    from stable_baselines3 import PPO
    from torch.utils.tensorboard import SummaryWriter

    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    root = seed_dir(config, seed)
    budgets = config.budget_list

    def checkpoint(budget: int) -> Path:
        return root / f"budget_{budget}" / "model.zip"

    env = make_training_env(config.game, config.num_envs, seed)
    model = make_ppo(env, seed, root / "tensorboard")
    callback = _budget_checkpoints(budgets, checkpoint)
    start = time.perf_counter()
    # The linear schedules decay over exactly --steps as in rl-zoo; the callback stops
    # training at the last budget instead of finishing that rollout.
    model.learn(total_timesteps=config.steps, callback=callback, tb_log_name=config.algo)
    train_wall_s = time.perf_counter() - start
    env.close()

    results_by_budget: dict[int, dict[str, Any]] = {}
    writer = SummaryWriter(str(root / "tensorboard" / "eval"))
    seeds = eval_seeds(config.eval_episodes)
    for budget in budgets:
        trained = PPO.load(checkpoint(budget), device="cpu")
        evaluation = evaluate_sb3_policy(
            trained,
            config.game,
            seeds,
            max_steps=config.eval_max_steps,
            deterministic=not config.stochastic_eval,
        )
        results = build_results(
            model=str(checkpoint(budget)),
            game=config.game,
            policy=config.algo,
            seeds=seeds,
            returns=evaluation["returns"],
            oracle_agreement=evaluation["oracle_agreement"],
            oracle_agreement_by_phase=evaluation["oracle_agreement_by_phase"],
            invalid_rate=0.0,  # an RL policy can only choose legal actions
            env_steps=evaluation["env_steps"],
            steps_per_s=evaluation["env_steps"] / max(evaluation["wall_s"], 1e-9),
            video=None,
        )
        if config.eval_max_steps is not None:
            results["max_steps"] = config.eval_max_steps  # capped episodes: flagged, never the protocol's score
        write_results(checkpoint(budget).parent / "results.json", results)
        writer.add_scalar("eval/mean_return", results["mean_return"], budget)
        if results["oracle_agreement"] is not None:
            writer.add_scalar("eval/oracle_agreement", results["oracle_agreement"], budget)
        results_by_budget[budget] = results
        print(
            f"{config.algo} {config.game} seed {seed} budget {budget}: "
            f"mean return {results['mean_return']:.2f} {results['returns']}",
            flush=True,
        )
    writer.close()

    run_info = {
        "config": asdict(config),
        "seed": seed,
        "hyperparams": {**PPO_ATARI_HYPERPARAMS, "batch_size": model.batch_size, "num_envs": config.num_envs},
        "train_wall_s": train_wall_s,
        "train_steps_per_s": model.num_timesteps / max(train_wall_s, 1e-9),
        "checkpoints": {str(b): info for b, info in callback.saved.items()},
        "mean_return_by_budget": {str(b): r["mean_return"] for b, r in results_by_budget.items()},
    }
    (root / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    return results_by_budget


def _existing_results(config: BaselineConfig, seed: int) -> dict[int, dict[str, Any]] | None:
    """A finished seed's results by budget, or None if any budget's results.json is missing."""
    paths = {b: seed_dir(config, seed) / f"budget_{b}" / "results.json" for b in config.budget_list}
    if not all(path.is_file() for path in paths.values()):
        return None
    return {b: load_results(path) for b, path in paths.items()}


def main(config: BaselineConfig) -> dict[int, dict[int, dict[str, Any]]]:
    """Train and evaluate every seed; print and return each budget's mean return per seed."""
    all_results = {}
    for seed in config.seed_list:
        existing = None if config.overwrite else _existing_results(config, seed)
        if existing is not None:
            print(f"seed {seed}: results exist under {seed_dir(config, seed)}, reused (--overwrite to retrain)")
        all_results[seed] = existing if existing is not None else run_seed(config, seed)
    for budget in config.budget_list:
        means = [all_results[s][budget]["mean_return"] for s in config.seed_list]
        print(f"budget {budget}: mean return per seed {means}, over seeds {float(np.mean(means)):.2f}")
    return all_results
