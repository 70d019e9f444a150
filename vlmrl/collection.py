"""The trial phase: play episodes and write them, one parquet shard per finished episode.

Each step's frames are PNG-encoded, and each finished episode's shard written, by one background
thread (``ShardWriter``) in order while the next steps play: PNG encoding releases the GIL, so it
runs beside the model instead of between its steps. Every finished episode is flushed before
``collect`` returns or raises, an interrupted run included, and a failed write stops the run with
that error.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmrl.configs import CollectArguments
from vlmrl.data import (
    EPISODE_FEATURES,
    check_manifest,
    discounted_returns,
    ensure_writable,
    existing_shards,
    meta_path,
    png_bytes,
    record_manifest,
    shard_dir,
    verify_shards,
    write_dataset_card,
    write_json,
    write_shard,
)
from vlmrl.env import AtariBatch
from vlmrl.games import get_game
from vlmrl.policies import build_policy
from vlmrl.rollout import EpisodeRecord, play_episodes

MANIFEST = "collection.json"
SUMMARY = "summary.json"
# Settings that must match for a re-run to resume a collection rather than mix two.
_RESUME_KEYS = ("model", "policy", "game", "seed", "max_steps", "decode", "temperature", "frames", "encoding",
                "crop", "image_size", "frameskip", "repeat_action_probability", "gamma", "iteration", "teacher_mix",
                "action_bias")


def episode_table(episode: EpisodeRecord, *, model: str, iteration: int, gamma: float) -> pa.Table:
    """One episode's rows (``EPISODE_FEATURES``' columns) as an Arrow table, built column by column."""
    steps = episode.steps
    n = len(steps)
    returns = discounted_returns([s.reward for s in steps], gamma)
    decisions = [s.decision for s in steps]
    frames = pa.StructArray.from_arrays(
        [pa.array([_png(s.frame) for s in steps], pa.binary()), pa.nulls(n, pa.string())], ["bytes", "path"]
    )
    rams = np.stack([s.ram for s in steps]).astype(np.uint8) if n else np.zeros((0, 128), np.uint8)
    columns = {
        "episode_id": pa.array(np.full(n, episode.episode_id, np.int32)),
        "seed": pa.array(np.full(n, episode.seed, np.int64)),
        "step": pa.array(np.arange(n, dtype=np.int32)),
        "frame": frames,
        "action": pa.array([d.action for d in decisions], pa.string()),
        "reasoning": pa.array([d.reasoning for d in decisions], pa.string()),
        "raw_output": pa.array([d.raw_output for d in decisions], pa.string()),
        "valid": pa.array([d.valid for d in decisions], pa.bool_()),
        "teacher": pa.array([s.teacher for s in steps], pa.bool_()),
        "reward": pa.array(np.array([s.reward for s in steps], np.float32)),
        "terminated": pa.array([s.terminated for s in steps], pa.bool_()),
        "truncated": pa.array([s.truncated for s in steps], pa.bool_()),
        "return_to_go": pa.array(returns.astype(np.float32)),
        "ram": pa.FixedSizeListArray.from_arrays(pa.array(rams.ravel()), 128),
        "model": pa.array([model] * n, pa.string()),
        "iteration": pa.array(np.full(n, iteration, np.int32)),
    }
    return pa.table(columns)  # write_shard casts it to EPISODE_FEATURES' schema


class EncodedFrame:
    """A frame whose PNG encoding was queued on the writer's thread (``ShardWriter.encode_frames``)."""

    __slots__ = ("_future", "_index")

    def __init__(self, future: Future, index: int) -> None:
        self._future, self._index = future, index

    def png(self) -> bytes:
        return self._future.result()[self._index]


def _png(frame) -> bytes:
    return frame.png() if isinstance(frame, EncodedFrame) else png_bytes(frame)


def _png_all(frames: list[np.ndarray]) -> list[bytes]:
    return [png_bytes(f) for f in frames]


class ShardWriter:
    """Runs shard writes, and the PNG encoding of each step's frames, on one background thread in
    submission order (a step's frames are encoded before the write of its episode runs).

    ``submit`` returns at once unless ``max_pending`` writes are queued (then it waits for the
    oldest) and raises the error of any write that failed. ``close`` waits for every queued job;
    with ``raise_errors`` it raises the first failed write's error.
    """

    def __init__(self, max_pending: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmrl-shards")
        self._pending: deque[Future] = deque()
        self.max_pending = max_pending

    def submit(self, fn, *args, **kwargs) -> None:
        self._pending.append(self._pool.submit(fn, *args, **kwargs))
        while self._pending and (self._pending[0].done() or len(self._pending) > self.max_pending):
            self._pending.popleft().result()  # raises a failed write's error here, in the caller's thread

    def encode_frames(self, frames: list[np.ndarray]) -> list[EncodedFrame]:
        """Queues one step's frames for PNG encoding; ``play_episodes``' ``on_frames``."""
        future = self._pool.submit(_png_all, frames)
        return [EncodedFrame(future, i) for i in range(len(frames))]

    def close(self, raise_errors: bool = True) -> None:
        self._pool.shutdown(wait=True)
        first_error = None
        while self._pending:
            error = self._pending.popleft().exception()
            first_error = first_error or error
        if raise_errors and first_error is not None:
            raise first_error


def write_episode(output_dir: Path, episode: EpisodeRecord, *, model: str, iteration: int, gamma: float) -> None:
    table = episode_table(episode, model=model, iteration=iteration, gamma=gamma)
    write_shard(output_dir, episode_shard_name(episode.episode_id), table, EPISODE_FEATURES)


def episode_shard_name(episode_id: int) -> str:
    return f"episode-{episode_id:06d}"


def summarize(output_dir: str | Path) -> dict:
    """Episodes, returns, steps and invalid-output rate, read from every shard on disk."""
    files = sorted(shard_dir(output_dir).glob("episode-*.parquet"))
    returns, steps, invalid, taught = [], 0, 0, 0
    for f in files:
        table = pq.read_table(f, columns=["reward", "valid", "teacher"])
        rewards = table.column("reward").to_numpy()
        returns.append(float(rewards.sum()))
        steps += len(rewards)
        invalid += int((~table.column("valid").to_numpy(zero_copy_only=False)).sum())
        taught += int(table.column("teacher").to_numpy(zero_copy_only=False).sum())
    return {
        "episodes": len(files),
        "returns": returns,
        "mean_return": float(np.mean(returns)) if returns else None,
        "std_return": float(np.std(returns)) if returns else None,
        "steps": steps,
        "invalid_rate": invalid / steps if steps else 0.0,
        "teacher_share": taught / steps if steps else 0.0,  # steps whose action the oracle chose
    }


def resume_settings(args: CollectArguments) -> dict:
    """The settings a resumed collection must share, the observation as the model will see it."""
    settings = {k: getattr(args, k) for k in _RESUME_KEYS}
    if args.policy == "model":
        from vlmrl.models import vision_image_size

        observation = args.observation_config(args.model, vision_image_size(args.model))
        settings.update({k: getattr(observation, k) for k in ("frames", "encoding", "crop", "image_size")})
    return settings


def collect(args: CollectArguments) -> dict:
    """Runs the trial phase; resumes a partial collection in ``args.output_dir``. Returns the summary.

    Under ``accelerate launch`` (CPU or GPU) each process plays its share of the episodes into the one
    dataset folder; the main process writes the summary, counting every process's steps.
    """
    from vlmrl.distributed import gather, process_state
    from vlmrl.tracking import Tracker, logging_dir

    state = process_state()
    game = get_game(args.game)
    output_dir = Path(args.output_dir)
    settings = resume_settings(args)
    if state.is_main_process:  # checked now, recorded once the policy is built: a failed start records nothing
        ensure_writable(output_dir)
        check_manifest(output_dir, MANIFEST, settings, "collection", record=False)
        verify_shards(output_dir)
    state.wait_for_everyone()

    done = {int(name.split("-")[1]) for name in existing_shards(output_dir) if name.startswith("episode-")}
    jobs = [
        (i, args.seed + i)
        for i in range(args.episodes)
        if i not in done and i % state.num_processes == state.process_index
    ]
    batch = AtariBatch(game.id, args.num_envs, frameskip=args.frameskip,
                       repeat_action_probability=args.repeat_action_probability)
    new_steps, setup_s, start = 0, 0.0, time.perf_counter()
    tracker = Tracker(args.report_to, logging_dir(args.logging_dir, meta_path(output_dir, "tensorboard")),
                      run_name=f"collect-{output_dir.name}", config=_settings(args),
                      process_index=state.process_index, num_processes=state.num_processes)
    writer = ShardWriter()
    try:
        if jobs:
            policy = build_policy(args, game, batch.action_names, seed=args.seed + state.process_index)
            if state.is_main_process:
                record_manifest(output_dir, MANIFEST, settings)
            teacher = None
            if args.teacher_mix > 0:
                from vlmrl.policies.oracle import OraclePolicy

                teacher = OraclePolicy(game)
            setup_s = time.perf_counter() - start  # loading the model: not part of the steps/s
            for episode in play_episodes(
                policy, batch, jobs, max_steps=args.max_steps,
                progress=args.progress and state.is_local_main_process, desc="collect",
                teacher=teacher, teacher_mix=args.teacher_mix, seed=args.seed,
                on_frames=writer.encode_frames,
                on_episode=lambda e, steps: tracker.episode("collect", e.episode_return, len(e.steps), steps),
            ):
                writer.submit(write_episode, output_dir, episode, model=policy.model_name, iteration=args.iteration,
                              gamma=args.gamma)
                new_steps += len(episode.steps)
    except BaseException:
        writer.close(raise_errors=False)  # interrupted: every finished episode is still written
        raise
    else:
        writer.close()
    finally:
        batch.close()
        tracker.close()
    if state.is_main_process and not jobs:
        record_manifest(output_dir, MANIFEST, settings)  # nothing to play: nothing can fail to start
    elapsed = time.perf_counter() - start
    # Every process's steps and stepping time: the rate is the processes' together, over the slowest one's time.
    per_process = gather((new_steps, elapsed - setup_s, setup_s), state)
    new_steps = sum(n for n, _, _ in per_process)
    active_s = max(t for n, t, _ in per_process if n) if new_steps else 0.0
    setup_s = max(s for _, _, s in per_process)
    summary = summarize(output_dir)
    summary.update(
        {
            "requested_episodes": args.episodes,
            "resumed_episodes": len(done),
            "new_steps": new_steps,
            # from the first step to the last shard on disk
            "steps_per_s": new_steps / active_s if new_steps and active_s > 0 else None,
            "setup_s": setup_s,  # loading the policy
            "wall_s": elapsed,
            "processes": state.num_processes,
            "settings": _settings(args),
            "observation": {k: v for k, v in settings.items() if k in ("frames", "encoding", "crop", "image_size")},
        }
    )
    if state.is_main_process:
        write_json(meta_path(output_dir, SUMMARY), summary)
        write_dataset_card(
            output_dir,
            title=f"vlmrl episodes: {args.game}, {args.policy} policy",
            body=episodes_card_body(args, summary),
            tags=["episodes"],
        )
    return summary


def _settings(args: CollectArguments) -> dict:
    return {k: v for k, v in asdict(args).items() if k != "push_to_hub"}


def episodes_card_body(args: CollectArguments, summary: dict) -> str:
    who = args.model if args.policy == "model" else f"the {args.policy} policy"
    mean = summary["mean_return"]
    return (
        f"Episodes of {args.game} played by {who} (iteration {args.iteration}), one row per agent step: "
        "the frame the agent saw, its action and reasoning, the reward, the discounted return-to-go "
        f"(gamma {args.gamma}) and the 128-byte RAM.\n\n"
        f"- episodes: {summary['episodes']} (seeds {args.seed}..{args.seed + args.episodes - 1})\n"
        f"- steps: {summary['steps']}\n"
        f"- mean return: {mean if mean is None else round(mean, 2)} (std {summary['std_return']})\n"
        f"- invalid outputs: {summary['invalid_rate']:.3f}\n"
        f"- steps played by the oracle teacher (DAgger mix {args.teacher_mix}): {summary['teacher_share']:.3f}\n"
        f"- protocol: frameskip {args.frameskip}, sticky actions {args.repeat_action_probability}, "
        f"max steps {args.max_steps}\n"
        f"- observation: {summary['observation']}, decode {args.decode}\n"
    )


def format_summary(summary: dict) -> str:
    mean = summary["mean_return"]
    rate = summary.get("steps_per_s")
    return (
        f"episodes {summary['episodes']} | mean return {mean if mean is None else f'{mean:+.2f}'}"
        f" ± {summary['std_return'] or 0:.2f} | steps {summary['steps']}"
        f" | steps/s {rate if rate is None else f'{rate:.0f}'} | invalid {summary['invalid_rate']:.1%}"
    )
