"""Two CPU processes under ``accelerate launch --multi_gpu``: each plays its share of the episodes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from datasets import load_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlmrl.configs import EvaluateArguments
from vlmrl.distributed import my_share
from vlmrl.evaluation import evaluate

ROOT = Path(__file__).resolve().parent.parent


def _launch(script: str, *argv: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:  # a free port: tests may run beside another launch
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(ROOT / script), *argv]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _episodes_logged(log_dir: Path, tag: str) -> int:
    return len(EventAccumulator(str(log_dir)).Reload().Scalars(tag))


class _State:
    def __init__(self, rank: int, n: int) -> None:
        self.process_index, self.num_processes = rank, n


def test_share_divides_the_jobs():
    jobs = list(range(7))
    shares = [my_share(jobs, _State(r, 3)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]] and my_share(jobs, _State(0, 1)) == jobs


def test_two_process_collection_divides_the_episodes(tmp_path):
    out = tmp_path / "ep"
    done = _launch("collect.py", "--policy", "random", "--episodes", "5", "--max-steps", "20", "--num-envs", "2",
                   "--output-dir", str(out), "--progress", "false")
    # One summary, printed once, counting both processes' steps once.
    assert done.stdout.count("episodes 5 |") == 1, done.stdout
    summary = json.loads((out / ".vlmrl" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["episodes"] == 5 and summary["new_steps"] == 100
    # One dataset: every episode once.
    ds = load_dataset(str(out), split="train")
    pairs = list(zip(ds["episode_id"], ds["step"], strict=True))
    assert len(pairs) == len(set(pairs)) == 100 and sorted(set(ds["episode_id"])) == [0, 1, 2, 3, 4]
    # Disjoint shares: rank 0 played episodes 0, 2, 4 and rank 1 played 1, 3 (5 each if both played all).
    logged = [_episodes_logged(out / ".vlmrl" / "tensorboard" / f"process_{r}", "collect/episodic_return")
              for r in (0, 1)]
    assert logged == [3, 2]


def test_two_process_evaluation_gathers_one_results_file(tmp_path):
    flags = dict(policy="oracle", episodes=3, max_steps=30, num_envs=2, progress=False, report_to="none",
                 video_episodes="all")
    alone = evaluate(EvaluateArguments(output_dir=str(tmp_path / "one"), **flags))
    _launch("evaluate.py", "--policy", "oracle", "--episodes", "3", "--max-steps", "30", "--num-envs", "2",
            "--output-dir", str(tmp_path / "two"), "--progress", "false", "--video-episodes", "all")
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for key in ("returns", "seeds", "env_steps", "oracle_agreement", "oracle_agreement_by_phase", "episodes"):
        assert two[key] == alone[key], key
    assert two["videos"] == [str(tmp_path / "two" / f"episode_{i:03d}.gif") for i in range(3)]
    assert all(Path(v).exists() for v in two["videos"])
    logged = [_episodes_logged(tmp_path / "two" / "tensorboard" / f"process_{r}", "eval/episodic_return")
              for r in (0, 1)]
    assert logged == [2, 1]
