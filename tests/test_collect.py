import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset

import vlmrl.collection as collection
from vlmrl.configs import CollectArguments
from vlmrl.data import discounted_returns
from vlmrl.env import AtariBatch

ROOT = Path(__file__).resolve().parent.parent


def _args(tmp_path, **kw):
    defaults = dict(policy="random", episodes=3, max_steps=30, num_envs=2, output_dir=str(tmp_path / "ep"),
                    progress=False)
    defaults.update(kw)
    return CollectArguments(**defaults)


def test_png_frames_are_lossless():
    import io

    from PIL import Image

    from vlmrl.data import png_bytes

    batch = AtariBatch("ALE/Pong-v5", 1)
    frames = [batch.reset(0, seed=1)[0]] + [batch.step({0: "RIGHT"})[0].frame for _ in range(40)]
    rng = np.random.default_rng(0)
    frames.append(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8))  # any content, any size
    for frame in frames:
        image = Image.open(io.BytesIO(png_bytes(frame)))
        assert image.format == "PNG" and image.mode == "RGB" and np.array_equal(np.asarray(image), frame)


def test_return_to_go_arithmetic():
    rewards = [0, 0, -1, 0, 1]
    expected = [-0.81 + 0.5 ** 0 * 0.9 ** 4, -0.9 + 0.9 ** 3, -1 + 0.9 ** 2, 0.9, 1.0]
    assert np.allclose(discounted_returns(rewards, 0.9), expected)
    assert np.allclose(discounted_returns(rewards, 1.0), [0, 0, 0, 1, 1])
    assert np.allclose(discounted_returns(rewards, 0.0), rewards)


def test_episodes_schema_and_content(tmp_path):
    summary = collection.collect(_args(tmp_path, gamma=0.9))
    ds = load_dataset(str(tmp_path / "ep"), split="train")
    assert set(ds.column_names) >= {"episode_id", "step", "frame", "action", "reasoning", "raw_output", "valid",
                                    "reward", "terminated", "truncated", "return_to_go", "ram", "model", "iteration"}
    assert len(ds) == 90 and summary["episodes"] == 3 and summary["steps"] == 90
    assert ds[0]["frame"].size == (160, 210) and len(ds[0]["ram"]) == 128
    for episode in range(3):
        rows = ds.filter(lambda r, e=episode: r["episode_id"] == e).sort("step")
        assert rows["step"] == list(range(30))
        assert np.allclose(rows["return_to_go"], discounted_returns(rows["reward"], 0.9), atol=1e-5)
        assert rows["truncated"][-1] and not any(rows["truncated"][:-1])
    # The next frame of a step is the next row: frames are stored once, and they change.
    assert np.asarray(ds[0]["frame"]).tobytes() != np.asarray(ds[29]["frame"]).tobytes()
    first = ds.filter(lambda r: r["episode_id"] == 0 and r["step"] == 0)[0]
    assert np.array_equal(np.asarray(first["frame"]), AtariBatch("ALE/Pong-v5", 1).reset(0, seed=0)[0])  # lossless
    assert first["seed"] == 0 and isinstance(first["ram"], list) and len(first["ram"]) == 128
    saved = json.loads((tmp_path / "ep" / ".vlmrl" / "summary.json").read_text())
    assert saved["episodes"] == 3 and saved["invalid_rate"] == 0.0


def test_interrupted_collection_resumes_without_loss_or_duplicates(tmp_path, monkeypatch):
    real = collection.write_shard
    calls = {"n": 0}

    def crash_after_two(*a, **kw):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(collection, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        collection.collect(_args(tmp_path, episodes=5))
    written = sorted(p.name for p in (tmp_path / "ep" / "data").glob("*.parquet"))
    assert len(written) == 2
    before = {p: (tmp_path / "ep" / "data" / p).read_bytes() for p in written}

    monkeypatch.setattr(collection, "write_shard", real)
    summary = collection.collect(_args(tmp_path, episodes=5))
    assert summary["resumed_episodes"] == 2 and summary["episodes"] == 5
    ds = load_dataset(str(tmp_path / "ep"), split="train")
    pairs = list(zip(ds["episode_id"], ds["step"], strict=True))
    assert len(pairs) == len(set(pairs)) == 150
    assert sorted(set(ds["episode_id"])) == [0, 1, 2, 3, 4]
    for p, content in before.items():  # finished episodes are kept as they were
        assert (tmp_path / "ep" / "data" / p).read_bytes() == content


def test_an_interrupted_run_flushes_the_episodes_it_finished(tmp_path, monkeypatch):
    # Shards are written in the background: slow writes still queued when the run is interrupted
    # must all reach the disk, in order, before the interruption propagates.
    real_write, real_play, order = collection.write_shard, collection.play_episodes, []

    def slow_write(output_dir, name, *a, **kw):
        time.sleep(0.3)
        order.append(name)
        return real_write(output_dir, name, *a, **kw)

    def interrupted_play(*a, **kw):
        for i, episode in enumerate(real_play(*a, **kw)):
            yield episode
            if i == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(collection, "write_shard", slow_write)
    monkeypatch.setattr(collection, "play_episodes", interrupted_play)
    with pytest.raises(KeyboardInterrupt):
        collection.collect(_args(tmp_path, episodes=6, num_envs=1))
    assert order == [f"episode-{i:06d}" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "ep" / "data").glob("*.parquet")) == [f"{n}.parquet" for n in order]


def test_resume_refuses_other_settings(tmp_path):
    collection.collect(_args(tmp_path, episodes=1))
    with pytest.raises(ValueError, match="other settings.*seed"):
        collection.collect(_args(tmp_path, episodes=1, seed=5))


def test_collect_with_the_tiny_model_records_model_and_validity(tmp_path, tiny_model):
    args = _args(tmp_path, policy="model", model=tiny_model, episodes=2, max_steps=5, frames=2,
                 encoding="motion", crop=True, iteration=3)
    summary = collection.collect(args)
    ds = load_dataset(str(tmp_path / "ep"), split="train")
    assert set(ds["model"]) == {tiny_model} and set(ds["iteration"]) == {3}
    assert all(ds["valid"]) and summary["invalid_rate"] == 0.0


def _run(*argv, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "collect.py", *argv], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--policy", "random", "--game", "ALE/NotAGame-v5", "--episodes", "1"], "unknown game id"),
        (["--model", "data/models/does-not-exist", "--episodes", "1"], "does not exist"),
        (["--policy", "random", "--episodes", "-1"], "--episodes must be >= 0"),
        (["--policy", "model", "--episodes", "1"], "needs --model"),
        (["--policy", "random", "--output-dir", "/proc/vlmrl-cannot-write", "--episodes", "1"], "not writable"),
    ],
)
def test_clear_errors(argv, message, tmp_path):
    if "--output-dir" not in argv:
        argv = [*argv, "--output-dir", str(tmp_path / "out")]
    result = _run(*argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_non_vlm_model_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "text-only"
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, vocab_size=64)).save_pretrained(path)
    result = _run("--model", str(path), "--episodes", "1", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "without a vision tower" in result.stderr


def test_both_flag_spellings_and_recipe(tmp_path):
    recipe = tmp_path / "collect.yaml"
    recipe.write_text("policy: random\nepisodes: 1\nmax_steps: 50\nnum_envs: 1\nprogress: false\n")
    result = _run("--config", str(recipe), "--max_steps", "4", "--output-dir", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    result = _run("--config", str(recipe), "--max-steps", "6", "--output-dir", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "a" / ".vlmrl" / "summary.json").read_text())["steps"] == 4
    assert json.loads((tmp_path / "b" / ".vlmrl" / "summary.json").read_text())["steps"] == 6


def test_teacher_mix_plays_the_oracle_and_records_it(tmp_path):
    summary = collection.collect(_args(tmp_path, episodes=2, max_steps=40, teacher_mix=1.0))
    ds = load_dataset(str(tmp_path / "ep"), split="train")
    assert all(ds["teacher"]) and summary["teacher_share"] == 1.0
    assert set(ds["action"]) <= {"RIGHT", "LEFT", "NOOP"}  # the oracle's actions, not the random policy's
    half = collection.collect(_args(tmp_path, episodes=4, max_steps=50, teacher_mix=0.5,
                                    output_dir=str(tmp_path / "half")))
    assert 0.3 < half["teacher_share"] < 0.7


def test_progress_counts_agent_steps_and_episodes_are_logged_as_they_finish(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    collection.collect(_args(tmp_path, progress=True, logging_dir=str(tmp_path / "tb")))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "90/90" in bar and "mean_return=" in bar and "episodes=3/3" in bar  # 3 episodes x 30 steps
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    # Two envs: episodes 0 and 1 end together at 60 agent steps, episode 2 at 90 (CleanRL's x-axis).
    assert [e.step for e in events.Scalars("collect/episodic_return")] == [60, 60, 90]
    assert [e.value for e in events.Scalars("collect/episodic_length")] == [30, 30, 30]
    with pytest.raises(ValueError, match="--report-to must be one of"):
        collection.collect(_args(tmp_path, report_to="mlflow", output_dir=str(tmp_path / "other")))
