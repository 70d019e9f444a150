"""The reflection phase: choose poor steps, ask a reflector, write TRL prompt/completion data.

Pong's reward is sparse (+-1 when a point ends), so credit goes through the discounted
return-to-go: a step is poor when it leads toward a lost point (negative return-to-go).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Image, Value
from tqdm.auto import tqdm

from vlmrl.configs import ReflectArguments
from vlmrl.data import (
    check_manifest,
    ensure_writable,
    existing_shards,
    meta_path,
    record_manifest,
    require_columns,
    shard_dir,
    write_dataset_card,
    write_json,
    write_shard,
)
from vlmrl.env import make_env
from vlmrl.games import Game, get_game
from vlmrl.games.base import decide_batch
from vlmrl.models import vision_image_size
from vlmrl.observation import ObservationConfig, encode_observation
from vlmrl.prompts import acting_messages, completion_messages
from vlmrl.references import load_dataset_reference
from vlmrl.reflectors import ReflectionItem, build_reflector

REQUIRED_EPISODE_COLUMNS = ["episode_id", "step", "frame", "action", "reasoning", "reward", "return_to_go", "ram",
                            "model"]
CHUNK = 256  # reflections per shard: the unit of resumption
MANIFEST = "reflection.json"
PROGRESS = "progress.json"
SUMMARY = "summary.json"

_MESSAGE = [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}]


def reflection_features(images_per_observation: int) -> Features:
    image = {"image": Image()} if images_per_observation == 1 else {"images": [Image()]}
    return Features(
        {
            "prompt": _MESSAGE,
            "completion": _MESSAGE,
            **image,
            "analysis": Value("string"),
            "action_taken": Value("string"),
            "correct_action": Value("string"),
            "correct_reasoning": Value("string"),
            "oracle_action": Value("string"),
            "reflector": Value("string"),
            "source_episode_id": Value("int32"),
            "source_step": Value("int32"),
            "return_to_go": Value("float32"),
            "iteration": Value("int32"),
            # The game's perception questions' answer keys for the row's observation (JSON {name: answer});
            # what training's rehearsal asks about the row's image ("{}" where the game has none).
            "perception_answers": Value("string"),
        }
    )


def select_steps(
    returns: np.ndarray,
    *,
    reflect_on: str = "poor",
    rate: float = 0.3,
    max_reflections: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Row indices to reflect on (sorted) and the number of poor steps, from each row's stored
    return-to-go (discounted with the collection's gamma: one gamma for the whole loop)."""
    returns = np.asarray(returns, dtype=np.float64)
    poor = np.flatnonzero(returns < 0)
    candidates = poor if reflect_on == "poor" else np.arange(len(returns))
    return sample_rows(candidates, rate, max_reflections, seed), len(poor)


def sample_rows(candidates: np.ndarray, rate: float, max_reflections: int | None, seed: int) -> np.ndarray:
    """A seeded share ``rate`` of the candidate rows (at most ``max_reflections``), without repeats, sorted."""
    rng = np.random.default_rng(seed)
    n = int(round(len(candidates) * rate))
    if max_reflections is not None:
        n = min(n, max_reflections)
    return np.sort(rng.choice(candidates, size=n, replace=False)) if n else np.array([], dtype=np.int64)


def select_good_steps(
    returns: np.ndarray,
    episode_ids: np.ndarray,
    *,
    advantage: bool = False,
    rate: float = 1.0,
    max_reflections: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Self-imitation's steps (sorted row indices) and how many were good: those whose stored return-to-go
    is positive, or with ``advantage`` beats the mean return-to-go of their episode (the baseline)."""
    returns = np.asarray(returns, dtype=np.float64)
    episode_ids = np.asarray(episode_ids)
    score = returns
    if advantage:
        means = {e: returns[episode_ids == e].mean() for e in np.unique(episode_ids)}
        score = returns - np.array([means[e] for e in episode_ids])
    good = np.flatnonzero(score > 0)
    return sample_rows(good, rate, max_reflections, seed), len(good)


def perception_answers(game: Game, ram: np.ndarray, prev_ram: np.ndarray | None, frame: np.ndarray) -> str:
    """The game's question answer keys for one observation, as JSON (``{}`` for a game without questions)."""
    if not game.questions:
        return "{}"
    scene = game.scene(ram, prev_ram, frame)
    return json.dumps({q.name: q.answer(scene) for q in game.questions})


def reflection_accuracy(game: Game, corrected: list[str], oracle: list[str | None]) -> float | None:
    """Share of corrected actions in the oracle's class (up/down/stay); None without an oracle."""
    pairs = [(c, o) for c, o in zip(corrected, oracle, strict=True) if o]
    if not pairs:
        return None
    return sum(game.same_class(c, o) for c, o in pairs) / len(pairs)


class _EpisodeIndex:
    """Finds a step's neighbours (previous frames, next frame, previous RAM) in the episodes table."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        ids, steps = dataset["episode_id"], dataset["step"]
        self.row_of = {(int(e), int(s)): r for r, (e, s) in enumerate(zip(ids, steps, strict=True))}
        self.last: dict[int, int] = {}
        for e, s in self.row_of:
            self.last[e] = max(self.last.get(e, s), s)
        self._decoded: dict[int, np.ndarray] = {}  # hindsight shows one outcome frame to many steps: decode once

    def row(self, episode: int, step: int) -> int | None:
        return self.row_of.get((episode, step))

    def last_step(self, episode: int) -> int:
        return self.last[episode]

    def _frame(self, row: int) -> np.ndarray:
        if row not in self._decoded:
            if len(self._decoded) >= 1024:
                self._decoded.pop(next(iter(self._decoded)))
            self._decoded[row] = np.asarray(self.dataset[row]["frame"].convert("RGB"))
        return self._decoded[row]

    def frames(self, episode: int, step: int, k: int) -> list[np.ndarray]:
        # An episode's first frame stands in for frames before it, as in play (FrameHistory).
        rows = [self.row(episode, max(step - j, 0)) for j in range(k - 1, -1, -1)]
        return [self._frame(r) for r in rows]


def _game_actions(game: Game) -> list[str]:
    env = make_env(game.id)
    try:
        return list(env.unwrapped.get_action_meanings())
    finally:
        env.close()


def _add_hindsight(item: ReflectionItem, reflector, index: _EpisodeIndex, episode: int, step: int, k: int,
                   game: Game, outcome: str, max_steps: int, rams: np.ndarray, rewards: np.ndarray) -> None:
    """Fills in the later views a reflector asked for, from the recorded episode: the previous step's
    observation, the next steps' and the outcome's (``Game.outcome_step``). The RAM only times the
    outcome (when the ball reached the player's column); what it shows is for the reflector to see."""
    last = index.last_step(episode)
    item.prev_frames = index.frames(episode, max(step - 1, 0), k)
    item.later_frames = [index.frames(episode, min(step + j, last), k) for j in range(1, reflector.later_views + 1)]
    if not reflector.outcome_views:
        return
    rows = [index.row(episode, s) for s in range(step, min(last, step + max_steps) + 1)]
    at = game.outcome_step(rams[rows], rewards[rows], 0, outcome=outcome, max_lookahead=max_steps)
    item.outcome_steps = at
    item.outcome_description = game.outcome_description(outcome)
    item.outcome_frames = [index.frames(episode, max(step + at - j, 0), k) for j in range(reflector.outcome_views)]


def _observation_row(images: list, observation: ObservationConfig) -> dict:
    return {"image": images[0]} if observation.images_per_observation == 1 else {"images": images}


def reflect(args: ReflectArguments) -> dict:
    """Runs the reflection phase into ``args.output_dir``; resumes a partial run. Returns the summary."""
    output_dir = ensure_writable(args.output_dir)
    game = get_game(args.game)
    dataset = load_dataset_reference(args.episodes)
    require_columns(dataset, REQUIRED_EPISODE_COLUMNS, "episodes")
    if len(dataset) == 0:
        raise ValueError(f"the episodes dataset {args.episodes!r} is empty")
    acting_model = args.model or dataset[0]["model"]
    iteration = int(dataset[0]["iteration"]) if "iteration" in dataset.column_names else 0
    settings = recorded_settings(args)
    check_manifest(output_dir, MANIFEST, settings, "reflection run", record=False)

    actions = _game_actions(game)
    returns = np.asarray(dataset.select_columns(["return_to_go"])["return_to_go"], dtype=np.float64)
    chosen, n_poor = select_steps(
        returns, reflect_on=args.reflect_on, rate=args.reflection_rate,
        max_reflections=args.max_reflections, seed=args.seed,
    )
    if args.reflector == "self-imitation":  # the control learns from the steps that went well instead
        chosen, _ = select_good_steps(returns, np.asarray(dataset["episode_id"]), advantage=args.advantage,
                                      rate=args.reflection_rate, max_reflections=args.max_reflections,
                                      seed=args.seed)
    # Hindsight: the game's outcome for grounded, the next frame (today's prompt) for writing reflectors.
    outcome, outcome_steps = args.hindsight()  # an outcome its game does not know was refused with the arguments
    hindsight_columns = None  # the episodes' RAM and rewards, read once when an outcome must be found
    observation = args.observation_config(acting_model, vision_image_size(acting_model))
    features = reflection_features(observation.images_per_observation)
    oracle = game.oracle() if game.has_oracle else None
    index = _EpisodeIndex(dataset)
    progress_path = meta_path(output_dir, PROGRESS)
    invalid_by_chunk = json.loads(progress_path.read_text()) if progress_path.exists() else {}
    done = set(existing_shards(output_dir))
    chunks = [chosen[i : i + CHUNK] for i in range(0, len(chosen), CHUNK)]
    todo = [(c, rows) for c, rows in enumerate(chunks) if f"reflections-{c:05d}" not in done]

    reflector = None
    if todo:  # loading a VLM reflector is skipped when nothing is left to do
        reflector = build_reflector(
            args.reflector, game=game, actions=actions, observation=observation,
            acting_model=acting_model, max_new_tokens=args.max_new_tokens, retries=args.retries,
            hindsight=outcome != "next",
        )
        if reflector.outcome_views or reflector.later_views:
            columns = dataset.select_columns(["ram", "reward"])
            hindsight_columns = (np.asarray(columns["ram"], np.uint8), np.asarray(columns["reward"], np.float64))
    # Recorded once the reflector is up: a run that fails to start leaves nothing that refuses the fix.
    record_manifest(output_dir, MANIFEST, settings)
    start = time.perf_counter()
    bar = tqdm(total=len(chosen), initial=len(chosen) - sum(len(r) for _, r in todo), desc="reflect",
               unit="step", disable=not args.progress, dynamic_ncols=True)
    try:
        for c, rows in todo:
            out_rows, invalid = [], 0
            for b in range(0, len(rows), args.batch_size):
                batch_rows = [int(r) for r in rows[b : b + args.batch_size]]
                items, records = [], []
                for r in batch_rows:
                    record = dataset[r]
                    episode, step = int(record["episode_id"]), int(record["step"])
                    prev = index.row(episode, step - 1)
                    nxt = index.row(episode, step + 1)
                    frames = index.frames(episode, step, observation.frames)
                    next_frames = index.frames(episode, step + 1, observation.frames) if nxt is not None else frames
                    items.append(
                        ReflectionItem(
                            frames=frames, next_frames=next_frames, ram=np.asarray(record["ram"], np.uint8),
                            prev_ram=None if prev is None else np.asarray(dataset[prev]["ram"], np.uint8),
                            action_taken=record["action"], reasoning=record["reasoning"] or "",
                            reward=float(record["reward"]), return_to_go=float(returns[r]),
                        )
                    )
                    if reflector.outcome_views or reflector.later_views:
                        _add_hindsight(items[-1], reflector, index, episode, step, observation.frames, game, outcome,
                                       outcome_steps, *hindsight_columns)
                    records.append(record)
                reflections = reflector.reflect(items)
                oracle_actions = (
                    [d.action for d in decide_batch(oracle, [i.ram for i in items], [i.prev_ram for i in items])]
                    if oracle else [None] * len(items)
                )
                for item, record, reflection, oracle_action, r in zip(
                    items, records, reflections, oracle_actions, batch_rows, strict=True
                ):
                    if reflection is None:
                        invalid += 1
                        continue
                    images = encode_observation(item.frames, observation, game)
                    out_rows.append(
                        {
                            "prompt": acting_messages(game, actions, len(images), observation.encoding),
                            "completion": completion_messages(
                                reflection.correct_action,
                                reflection.correct_reasoning if args.completion_reasoning else None,
                            ),
                            **_observation_row(images, observation),
                            "analysis": reflection.analysis,
                            "action_taken": item.action_taken,
                            "correct_action": reflection.correct_action,
                            "correct_reasoning": reflection.correct_reasoning,
                            "oracle_action": oracle_action,
                            "reflector": reflector.name,
                            "source_episode_id": int(record["episode_id"]),
                            "source_step": int(record["step"]),
                            "return_to_go": float(returns[r]),
                            "iteration": iteration,
                            "perception_answers": perception_answers(game, item.ram, item.prev_ram, item.frames[-1]),
                        }
                    )
                bar.update(len(batch_rows))
            # Progress first, then the shard: a crash between them re-does the chunk, never loses counts.
            invalid_by_chunk[str(c)] = invalid
            write_json(progress_path, invalid_by_chunk)
            write_shard(output_dir, f"reflections-{c:05d}", out_rows, features)
    finally:
        bar.close()

    summary = summarize(output_dir, game)
    summary.update(
        {
            "total_steps": len(dataset),
            "poor_steps": n_poor,
            "selected": int(len(chosen)),
            "invalid": int(sum(invalid_by_chunk.values())),
            "reflector": args.reflector,
            "outcome": outcome if reflector is None or reflector.outcome_views else None,
            "reflect_on": args.reflect_on,
            "reflection_rate": args.reflection_rate,
            "wall_s": time.perf_counter() - start,
        }
    )
    summary["iteration"] = iteration
    write_json(meta_path(output_dir, SUMMARY), summary)
    write_dataset_card(output_dir, title=f"vlmrl reflections: {args.game}, {args.reflector} reflector",
                       body=reflections_card_body(args, summary), tags=["reflections"])
    return summary


def recorded_settings(args: ReflectArguments) -> dict:
    """The settings a reflection run records and a resumed run must share (all but where and how fast).

    The hindsight horizon is recorded as it applies (100 steps, or the game's for ``ahead``), so runs
    recorded before it could be left to the game still compare equal."""
    settings = {k: v for k, v in asdict(args).items()
                if k not in ("push_to_hub", "progress", "batch_size", "output_dir")}
    outcome, steps = args.hindsight()
    settings["outcome_max_steps"] = None if outcome == "ahead" and args.outcome_max_steps is None else steps
    if args.reflector.startswith("grounded"):  # the game's rules turn the answers into actions: part of the method
        from vlmrl.games import get_game

        rules = getattr(get_game(args.game), "grounded_rules", None)
        if rules is not None:
            settings["grounded_rules"] = asdict(rules)
    return settings


def summarize(output_dir: str | Path, game: Game) -> dict:
    """Counts and accuracy read back from the written reflections."""
    import pyarrow.parquet as pq

    columns = ["action_taken", "correct_action", "oracle_action"]
    taken, corrected, oracle = [], [], []
    for path in sorted(shard_dir(output_dir).glob("*.parquet")):
        table = pq.read_table(path, columns=columns)
        taken += table.column("action_taken").to_pylist()
        corrected += table.column("correct_action").to_pylist()
        oracle += table.column("oracle_action").to_pylist()
    changed = None
    if corrected and game.has_oracle:
        changed = sum(not game.same_class(a, b) for a, b in zip(taken, corrected, strict=True)) / len(corrected)
    elif corrected:
        changed = sum(a != b for a, b in zip(taken, corrected, strict=True)) / len(corrected)
    accuracy = reflection_accuracy(game, corrected, oracle) if game.has_oracle else None
    return {"reflected": len(corrected), "changed_action_rate": changed, "accuracy": accuracy}


def reflections_card_body(args: ReflectArguments, summary: dict) -> str:
    acc = summary["accuracy"]
    return (
        f"Corrections written by the `{args.reflector}` reflector for steps of the episodes in `{args.episodes}`, "
        "in TRL's prompt/completion format with the observation as `image`: ready for `train.py`.\n\n"
        f"- steps in the episodes: {summary['total_steps']}, poor (stored return-to-go < 0): "
        f"{summary['poor_steps']}\n"
        f"- reflected on: {args.reflect_on} steps at rate {args.reflection_rate}: {summary['selected']} selected, "
        f"{summary['reflected']} written, {summary['invalid']} unusable answers dropped\n"
        f"- correction changed the action: {summary['changed_action_rate']}\n"
        f"- reflection accuracy (agreement with the RAM oracle, up/down/stay): "
        f"{acc if acc is None else round(acc, 3)}\n"
    )


def format_summary(summary: dict) -> str:
    acc = summary["accuracy"]
    changed = summary["changed_action_rate"]
    return (
        f"poor steps {summary['poor_steps']}/{summary['total_steps']} | reflected {summary['reflected']}"
        f"/{summary['selected']} | invalid {summary['invalid']}"
        f" | changed action {'-' if changed is None else f'{changed:.1%}'}"
        f" | accuracy vs oracle {'-' if acc is None else f'{acc:.1%}'}"
    )
