"""Resume is exact: an interrupted and resumed collection equals the uninterrupted one row for row."""

import numpy as np
import pyarrow.parquet as pq
import pytest

import vlmrl.collection as collection
import vlmrl.env as env
from vlmrl.configs import CollectArguments
from vlmrl.data import repair, shard_dir

COLUMNS = ["episode_id", "seed", "step", "frame", "action", "teacher", "reward", "terminated", "truncated",
           "return_to_go", "ram"]


def _args(out, **kw):
    # A sampling policy and the teacher's mixture: both draw random numbers every step.
    base = dict(policy="random", episodes=3, max_steps=12, num_envs=2, teacher_mix=0.5, seed=7,
                output_dir=str(out), progress=False)
    return CollectArguments(**{**base, **kw})


def _rows(out) -> list[tuple]:
    rows = []
    for path in sorted(shard_dir(out).glob("*.parquet")):
        table = pq.read_table(path, columns=COLUMNS).to_pylist()
        rows += [tuple(str(r[c]) if c == "frame" else r[c] for c in COLUMNS) for r in table]
    return sorted(rows, key=lambda r: (r[0], r[2]))


def _interrupt_after(monkeypatch, batch_steps: int) -> None:
    real, calls = env.AtariBatch.step, {"n": 0}

    def step(self, actions):
        calls["n"] += 1
        if calls["n"] > batch_steps:
            raise KeyboardInterrupt
        return real(self, actions)

    monkeypatch.setattr(env.AtariBatch, "step", step)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "ep"
    collection.collect(_args(out))
    return _rows(out)


@pytest.mark.parametrize("batch_steps, resume_envs", [(2, 2), (9, 2), (13, 3), (17, 1), (22, 2)])
def test_interrupted_collection_resumes_to_the_same_rows(tmp_path, monkeypatch, uninterrupted, batch_steps,
                                                         resume_envs):
    out = tmp_path / "ep"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, batch_steps)
        with pytest.raises(KeyboardInterrupt):
            collection.collect(_args(out))
    finished = len(list(shard_dir(out).glob("*.parquet"))) if shard_dir(out).exists() else 0
    assert finished < 3  # interrupted before the end
    # Resumed with another batch size: the data do not depend on which episodes share a batch.
    collection.collect(_args(out, num_envs=resume_envs))
    rows = _rows(out)
    assert len(rows) == len(uninterrupted) == 36
    assert rows == uninterrupted


def test_teacher_draws_are_per_episode(tmp_path, uninterrupted):
    # One episode alone draws what it drew among the others.
    collection.collect(_args(tmp_path / "one", episodes=1, num_envs=1))
    assert _rows(tmp_path / "one") == [r for r in uninterrupted if r[0] == 0]


def test_a_damaged_shard_is_named_at_resume_and_repair_redoes_it(tmp_path, uninterrupted):
    out = tmp_path / "ep"
    collection.collect(_args(out))
    shard = sorted(shard_dir(out).glob("*.parquet"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] + bytes(16) + data[len(data) // 2 + 16:])  # damaged mid-file
    with pytest.raises(ValueError, match=f"{shard.name}.*python -m vlmrl.data repair {out}"):
        collection.collect(_args(out))
    assert repair(out) == [shard.name]
    collection.collect(_args(out))
    assert _rows(out) == uninterrupted
    assert np.array_equal(np.array([r[0] for r in _rows(out)]), np.repeat(np.arange(3), 12))
