"""The SB3 PPO baseline: configuration, evaluation protocol, and a tiny end-to-end run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("cv2")

from vlmrl import rl_baseline  # noqa: E402
from vlmrl.results import RESULTS_KEYS, eval_seeds, load_results  # noqa: E402
from vlmrl.rl_baseline import BaselineConfig, evaluate_sb3_policy, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_budgets_are_sorted_capped_and_end_at_steps():
    config = BaselineConfig(steps=30_000, budgets="25000,10000,50000")
    assert config.budget_list == [10_000, 25_000, 30_000]
    assert BaselineConfig(seed=4).seed_list == [4]
    assert BaselineConfig(seeds=2).seed_list == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algo": "a2c"}, "--algo"),
        ({"budgets": "10k"}, "--budgets"),
        ({"budgets": "0,100"}, "--budgets"),
        ({"steps": 0}, "--steps"),
        ({"eval_episodes": 0}, "--eval-episodes"),
        ({"eval_max_steps": 0}, "--eval-max-steps"),
        ({"num_envs": 0}, "--num-envs"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BaselineConfig(**kwargs)


class _ConstantPolicy:
    """Stands in for an SB3 model: always the same action, remembering what it was shown."""

    def __init__(self, action: int) -> None:
        self.action = action
        self.observations: list[np.ndarray] = []

    def predict(self, observation, deterministic=True):
        self.observations.append(observation.copy())
        return np.array([self.action]), None


def test_evaluation_protocol_matches_training_observations():
    policy = _ConstantPolicy(action=0)
    evaluation = evaluate_sb3_policy(policy, "ALE/Pong-v5", [1_000_000], max_steps=5)
    assert evaluation["env_steps"] == 5 and len(evaluation["returns"]) == 1
    first, last = policy.observations[0], policy.observations[-1]
    # VecFrameStack's layout: (envs, 84, 84, 4), zeros before the first frame, newest last.
    assert first.shape == (1, 84, 84, 4) and first.dtype == np.uint8
    assert not first[..., :3].any() and first[..., 3].any()
    assert last[..., :].any(axis=(0, 1, 2)).all()
    # NOOP never agrees with the oracle when it moves; agreement is a fraction either way.
    assert 0.0 <= evaluation["oracle_agreement"] <= 1.0


def test_evaluation_sees_exactly_what_training_sees():
    # Same seed, same actions: the plain-env evaluation must show the policy the very arrays
    # the training VecEnv (make_vec_env + VecFrameStack) would, sticky actions included.
    policy = _ConstantPolicy(action=3)
    evaluate_sb3_policy(policy, "ALE/Pong-v5", [123], max_steps=60)
    venv = rl_baseline.make_training_env("ALE/Pong-v5", num_envs=1, seed=123)
    try:
        training_observations = [venv.reset()]
        for _ in range(len(policy.observations) - 1):
            training_observations.append(venv.step(np.array([3]))[0])
    finally:
        venv.close()
    for step, (seen, trained) in enumerate(zip(policy.observations, training_observations, strict=True)):
        assert np.array_equal(seen, trained), f"observations differ at step {step}"


def test_evaluation_is_reproducible_per_seed():
    first = evaluate_sb3_policy(_ConstantPolicy(2), "ALE/Pong-v5", [1_000_000, 1_000_001], max_steps=100)
    again = evaluate_sb3_policy(_ConstantPolicy(2), "ALE/Pong-v5", [1_000_000, 1_000_001], max_steps=100)
    assert first["returns"] == again["returns"]
    assert first["oracle_agreement"] == again["oracle_agreement"]


def test_tiny_run_writes_the_shared_schema(tmp_path, monkeypatch):
    config = BaselineConfig(
        steps=128, budgets="64", num_envs=1, seed=0, eval_episodes=1, eval_max_steps=40, output_dir=str(tmp_path)
    )
    results = main(config)
    assert sorted(results[0]) == [64, 128]
    run_dir = tmp_path / "ppo" / "pong-v5" / "seed_0"
    for budget in (64, 128):
        saved = load_results(run_dir / f"budget_{budget}" / "results.json")
        # a capped evaluation says so (max_steps); no videos are filmed here
        assert tuple(saved) == RESULTS_KEYS + ("oracle_agreement_by_phase", "max_steps")
        split = saved["oracle_agreement_by_phase"]
        assert sum(p["steps"] for p in split.values()) == 40
        agreed = sum(p["agreement"] * p["steps"] for p in split.values() if p["steps"])
        assert agreed / 40 == pytest.approx(saved["oracle_agreement"])
        assert saved["policy"] == "ppo" and saved["game"] == "ALE/Pong-v5"
        assert saved["seeds"] == eval_seeds(1) and saved["env_steps"] == 40
        assert saved["invalid_rate"] == 0.0 and 0.0 <= saved["oracle_agreement"] <= 1.0
        assert (run_dir / f"budget_{budget}" / "model.zip").is_file()
    assert (run_dir / "run.json").is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents*"))

    # A second run finds the results and does not train again.
    monkeypatch.setattr(rl_baseline, "run_seed", lambda *a: pytest.fail("retrained a finished seed"))
    assert main(config)[0][128]["mean_return"] == results[0][128]["mean_return"]


def test_cli_help_documents_every_flag():
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "baselines.py"), "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    for flag in (
        "--algo",
        "--game",
        "--steps",
        "--seeds",
        "--seed",
        "--budgets",
        "--eval-episodes",
        "--eval-max-steps",
        "--output-dir",
        "--num-envs",
    ):
        assert flag in help_text
