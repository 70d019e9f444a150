"""benchmarks/plateau_errors.py: the mistakes and approaches it counts, on constructed Pong steps."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlmrl.games.pong import make_pong_ram

ROOT = Path(__file__).resolve().parent.parent


def _write(folder: Path, rows: list[dict]) -> None:
    (folder / "data").mkdir(parents=True)
    table = pa.table({
        "action": [r["action"] for r in rows],
        "teacher": [r.get("teacher", False) for r in rows],
        "reward": [float(r.get("reward", 0.0)) for r in rows],
        "ram": pa.array([make_pong_ram(*r["ram"]).tolist() for r in rows], pa.list_(pa.uint8(), 128)),
    })
    pq.write_table(table, folder / "data" / "episode-000000.parquet")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/plateau_errors.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})


def test_a_lost_ball_with_missed_moves_and_a_returned_one(tmp_path):
    rows = [{"action": "NOOP", "ram": (100, 150, 150)}]
    # The ball comes toward the player high up while the paddle sits low: the oracle calls "up" every step, the
    # model stays (missed moves), and the point is lost.
    rows += [{"action": "NOOP", "ram": (100 + 6 * k, 60, 150)} for k in range(1, 5)]
    rows += [{"action": "NOOP", "ram": (0, 0, 150), "reward": -1}]
    # A new ball comes toward the paddle's own row (the oracle stays; the model once moves toward its target
    # side, once the other way), then goes back: a returned ball.
    rows += [{"action": "NOOP", "ram": (100, 152, 145)}]
    rows += [{"action": a, "ram": (100 + 6 * k, 152, 145)} for k, a in enumerate(["NOOP", "LEFT", "RIGHT"], 1)]
    rows += [{"action": "NOOP", "ram": (110, 152, 145)}]
    _write(tmp_path / "episodes", rows)
    result = _run("--episodes", str(tmp_path / "episodes"))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["approaches"]["lost"] == {"count": 1, "toward_steps": 4.0, "move_calls": 4.0, "missed_moves": 4.0,
                                         "extra_moves": 0.0}
    assert out["approaches"]["returned"]["count"] == 1 and out["approaches"]["returned"]["move_calls"] == 0.0
    assert out["approaches"]["returned"]["extra_moves"] == 2.0
    assert out["return_rate"] == 0.5
    assert out["confusion_toward"] == {"up->stay": 4, "stay->stay": 1, "stay->down": 1, "stay->up": 1}
    assert sum(out["stay_but_moved"].values()) == 2


def test_teacher_steps_are_not_the_models_and_the_label_prior(tmp_path):
    rows = [{"action": "NOOP", "ram": (100, 150, 150)}]
    rows += [{"action": "RIGHT", "teacher": True, "ram": (100 + 6 * k, 60, 150)} for k in range(1, 5)]
    rows += [{"action": "NOOP", "ram": (0, 0, 150), "reward": -1}]
    _write(tmp_path / "episodes", rows)
    (tmp_path / "reflections" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"correct_action": ["NOOP", "NOOP", "NOOP", "RIGHT"]}),
                   tmp_path / "reflections" / "data" / "reflections-00000.parquet")
    out = json.loads(_run("--episodes", str(tmp_path / "episodes"), "--reflections",
                          str(tmp_path / "reflections")).stdout)
    assert out["model_steps_toward"] == 0 and out["approaches"]["lost"]["count"] == 0  # the oracle played them
    assert out["label_prior"] == {"stay": 0.75, "up": 0.25} and out["logit_adjustment"] == "stay=0.000,up=-1.099"


def test_a_folder_of_another_kind_is_one_line(tmp_path):
    (tmp_path / "r" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"correct_action": ["NOOP"]}), tmp_path / "r" / "data" / "x.parquet")
    result = _run("--episodes", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("is not an episodes dataset: it has no action, teacher, reward, ram column")
