"""A game added in one file: a fake Skiing registered here alone (its own RAM parsing, oracle and prompt
text) runs collect -> reflect -> train -> evaluate with no other module changed."""

from __future__ import annotations

import json

import pytest

from vlmrl.games import Game, get_game, register_game, unregister_game
from vlmrl.games.base import OracleDecision

RULES = "You are the skier at the top: steer through every gate."


def skier_x(ram) -> int:
    """This fake's RAM parsing: the skier's column (a byte chosen for the test, not a verified address)."""
    return int(ram[25])


class SkierOracle:
    """Steers back to the middle column: a decision every step, from the RAM alone."""

    def decide(self, ram, prev_ram=None) -> OracleDecision:
        x = skier_x(ram)
        cls = "right" if x < 70 else "left" if x > 90 else "straight"
        action = {"right": "RIGHT", "left": "LEFT", "straight": "NOOP"}[cls]
        return OracleDecision(action, cls, f"The skier is at column {x}.", f"I steer {cls}.")


class FakeSkiing(Game):
    name = "Skiing"
    default_id = "ALE/Skiing-v5"
    rules = RULES
    action_classes = {"NOOP": "straight", "RIGHT": "right", "LEFT": "left"}
    class_actions = {"straight": "NOOP", "right": "RIGHT", "left": "LEFT"}
    phases = ("left_half", "right_half")

    def make_oracle(self) -> SkierOracle:
        return SkierOracle()

    def phase(self, ram, prev_ram) -> str:
        return "left_half" if skier_x(ram) < 80 else "right_half"


@pytest.fixture
def skiing():
    register_game(FakeSkiing)
    yield get_game("ALE/Skiing-v5")
    unregister_game("Skiing")


def test_the_registry_resolves_the_new_game_and_forgets_it(skiing):
    assert isinstance(skiing, FakeSkiing) and skiing.has_oracle and skiing.same_class("NOOP", "noop")
    unregister_game("Skiing")
    assert type(get_game("ALE/Skiing-v5")) is Game and not get_game("ALE/Skiing-v5").has_oracle


def test_a_registered_game_runs_the_whole_loop(skiing, tiny_model, tmp_path):
    from datasets import load_dataset

    import collect
    import evaluate
    import reflect
    import train
    from vlmrl.cli import parse
    from vlmrl.configs import CollectArguments, EvaluateArguments, ReflectArguments
    from vlmrl.training import TrainScriptArguments, cpu_defaults

    # The tiny model's record says "crop the playfield": this fake knows no playfield, so the frame is used whole.
    seeing = ["--game", "ALE/Skiing-v5", "--crop", "false"]
    episodes, reflections, ckpt, evaluation = (str(tmp_path / n) for n in ("ep", "refl", "ckpt", "eval"))
    summary = collect.main(*parse((CollectArguments,), [
        "--model", tiny_model, "--episodes", "2", "--max-steps", "6", "--num-envs", "2", "--teacher-mix", "0.5",
        "--output-dir", episodes, "--no-progress", *seeing]))
    assert summary["episodes"] == 2 and summary["steps"] == 12

    summary = reflect.main(*parse((ReflectArguments,), [
        "--episodes", episodes, "--reflector", "oracle", "--reflect-on", "all", "--reflection-rate", "1.0",
        "--completion-reasoning", "false", "--output-dir", reflections, "--no-progress", *seeing]))
    assert summary["reflected"] == 12 and summary["accuracy"] == 1.0  # the oracle agrees with itself
    rows = load_dataset(reflections, split="train")
    system = rows[0]["prompt"][0]["content"][0]["text"]
    assert system.startswith(f"Skiing. {RULES}") and "RIGHT (right)" in system  # the game's own prompt text
    assert set(rows["oracle_action"]) <= {"NOOP", "RIGHT", "LEFT"}
    assert rows[0]["analysis"].startswith("The skier is at column")

    metrics = train.main(*parse((TrainScriptArguments, *_trl_configs()), [
        "--model_name_or_path", tiny_model, "--reflections", reflections, "--output_dir", ckpt, "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--game", "ALE/Skiing-v5", "--crop", "false"],
        defaults=cpu_defaults()))
    assert metrics["global_steps"] == 1

    results = evaluate.main(*parse((EvaluateArguments,), [
        "--model", ckpt, "--episodes", "1", "--max-steps", "5", "--num-envs", "1", "--output-dir", evaluation,
        "--no-video", "--no-progress", "--game", "ALE/Skiing-v5"]))
    assert results["game"] == "ALE/Skiing-v5" and results["env_steps"] == 5
    assert 0.0 <= results["oracle_agreement"] <= 1.0
    split = results["oracle_agreement_by_phase"]
    assert set(split) == {"left_half", "right_half"} and sum(p["steps"] for p in split.values()) == 5
    # The checkpoint recorded what it saw (no crop), and evaluation used it without being told.
    assert json.loads((tmp_path / "ckpt" / "vlmrl_observation.json").read_text())["crop"] is False


def _trl_configs():
    from trl import ModelConfig, SFTConfig

    return SFTConfig, ModelConfig
