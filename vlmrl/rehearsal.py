"""Rehearsal: perception questions mixed into fine-tuning, so the tuned model still answers them.

Fine-tuned on action answers alone, the tiny model lost the answer words the vision probe and the
grounded reflector score (" above", " up", ...; README: above/below 0.953 -> 0.452 after 8
iterations), while it still used what it saw to act. Rehearsal mixes a share of question samples
into each training set: the same images as the reflections (so nothing new is collected), asked
the game's questions (``Game.questions``) with their answer keys. The keys are the reflections'
``perception_answers`` column, written by the reflection phase from the RAM of the step (the
reflections carry no RAM of their own).
"""

from __future__ import annotations

import json

import numpy as np
from datasets import Dataset, concatenate_datasets

from vlmrl.games import Game
from vlmrl.observation import ObservationConfig
from vlmrl.prompts import question_messages
from vlmrl.references import load_dataset_reference


def rehearsal_count(samples: int, share: float) -> int:
    """Rehearsal samples to add to ``samples`` training samples so they make up ``share`` of the whole."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"--rehearsal-share must be in [0, 1), got {share}")
    return int(round(samples * share / (1.0 - share)))


def rehearsal_rows(sources: Dataset, game: Game, observation: ObservationConfig, count: int, seed: int = 0) -> Dataset:
    """``count`` question samples (prompt/completion + image) on rows of ``sources`` (reflections with
    ``perception_answers``): each a row drawn at random and one of the questions its frame answers."""
    image_column = "image" if "image" in sources.column_names else "images"
    keys = [json.loads(a or "{}") for a in sources["perception_answers"]]
    questions = {q.name: q for q in game.questions}
    answerable = [(row, name) for row, key in enumerate(keys) for name, answer in key.items()
                  if answer is not None and name in questions]
    if not answerable:
        raise ValueError("no reflection row has a perception answer key to rehearse; re-run reflect.py (it writes "
                         "perception_answers for games with questions) or set --rehearsal-share 0")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(answerable), size=count, replace=count > len(answerable))
    chosen = [answerable[i] for i in picks]
    images = sources.select([row for row, _ in chosen])[image_column]
    return Dataset.from_dict({
        "prompt": [question_messages(questions[name].text, observation) for _, name in chosen],
        "completion": [[{"role": "assistant", "content": [{"type": "text", "text": keys[row][name]}]}]
                       for row, name in chosen],
        image_column: images,
    })


def mix_rehearsal(dataset: Dataset, references: list[str], game: Game, observation: ObservationConfig,
                  share: float, seed: int = 0) -> tuple[Dataset, int]:
    """``dataset`` with question samples added to make up ``share`` of it, shuffled; and how many were added."""
    count = rehearsal_count(len(dataset), share)
    if count == 0:
        return dataset, 0
    if not game.questions:
        raise ValueError(f"rehearsal asks the game's perception questions; none are known for {game.name}")
    sources = []
    for ref in references:
        ds = load_dataset_reference(ref)
        if "perception_answers" in ds.column_names:
            keep = [c for c in ("image", "images", "perception_answers") if c in ds.column_names]
            sources.append(ds.select_columns(keep))
    if not sources:
        raise ValueError("--rehearsal-share needs reflections with a perception_answers column (written by "
                         "reflect.py since rehearsal exists); re-run the reflection phase or set --rehearsal-share 0")
    pool = concatenate_datasets(sources) if len(sources) > 1 else sources[0]
    extra = rehearsal_rows(pool, game, observation, count, seed).cast(dataset.features)
    return concatenate_datasets([dataset, extra]).shuffle(seed=seed), count
