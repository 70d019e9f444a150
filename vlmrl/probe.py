"""The vision probe: can a model see what the game's frame shows?

Each of the game's questions (``Game.questions``: for Pong, is the ball above or below your
paddle, which way is it moving, ...) is asked as a chat prompt with the observation's image(s);
the model's answer is the option it finds most likely after ``Assistant:`` (one batched
forward per question and batch of frames, ``vlmrl.scoring``), and the key comes from the RAM.
Accuracy is reported beside chance, the majority answer's rate on the same frames, so a model
that always says "below" scores its chance and no more. Frames come from varied play on
held-out seeds (12345 + i by default; pre-training uses seeds from 1e9).

Works for any model loadable with ``AutoModelForImageTextToText`` + ``AutoProcessor``:
the tiny model or a checkpoint (their observation is read from their record) or
SmolVLM-Instruct (two RGB frames at 384 by default).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from vlmrl.games import Game, Question, get_game
from vlmrl.observation import ObservationConfig, encode_observation, recorded_observation
from vlmrl.prompts import option_text, question_messages
from vlmrl.rollout import PlayFrame, envs_for, varied_play
from vlmrl.scoring import score_continuations

DEFAULT_PROBE_SEED = 12345
# Two RGB frames at SmolVLM's tile size: the pretrained-vision default (FACTS: one 81-token tile).
DEFAULT_OBSERVATION = ObservationConfig(frames=2, encoding="rgb", crop=False, image_size=384)


def observation_for(model_path: str | Path) -> ObservationConfig:
    """The observation config a model was built or fine-tuned for (its record), else the default."""
    recorded = recorded_observation(model_path)
    return ObservationConfig(**recorded) if recorded else DEFAULT_OBSERVATION


def load_model(model_path: str | Path, device: str | None = None):
    """(model, processor) in eval mode, one tile per image at the vision tower's size; left padding."""
    import torch

    from vlmrl.models import load_processor, load_vlm

    model = load_vlm(str(model_path), torch.device(device) if device else None)
    size = model.config.vision_config.image_size
    processor = load_processor(str(model_path), ObservationConfig(image_size=size))
    processor.tokenizer.padding_side = "left"
    return model, processor


def answer_key(question: Question, samples: Sequence[PlayFrame], game: Game) -> list[str | None]:
    """The right option for each sample from its RAM (None: the question doesn't apply)."""
    return [question.answer(s.scene(game)) for s in samples]


def accuracy_and_chance(predicted: Sequence[str], key: Sequence[str | None]) -> dict:
    """Accuracy over the samples with a key, beside the majority key's rate on the same samples."""
    pairs = [(p, k) for p, k in zip(predicted, key, strict=True) if k is not None]
    if not pairs:
        return {"accuracy": None, "chance": None, "n": 0}
    correct = sum(p == k for p, k in pairs)
    majority = Counter(k for _, k in pairs).most_common(1)[0][1]
    return {"accuracy": round(correct / len(pairs), 4), "chance": round(majority / len(pairs), 4), "n": len(pairs)}


def collect_probe_frames(
    game: Game, frames: int = 500, seed: int = DEFAULT_PROBE_SEED, history: int = 2
) -> list[PlayFrame]:
    """Held-out frames of varied play, spread over episodes (one step in 20 is kept)."""
    keep_prob = 0.05
    play = varied_play(
        game, seed=seed, history=max(history, 2), keep_prob=keep_prob, num_envs=envs_for(frames, keep_prob)
    )
    samples = list(islice(play, frames))
    play.close()
    return samples


def probe_model(
    model,
    processor,
    samples: Sequence[PlayFrame],
    observation: ObservationConfig,
    *,
    game: Game,
    batch_size: int = 32,
    questions: Sequence[Question] | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """{question: {"accuracy", "chance", "n"}} for a loaded model on the given samples."""
    from tqdm.auto import tqdm

    questions = game.questions if questions is None else questions
    prompts = {
        q.name: processor.apply_chat_template(question_messages(q.text, observation), add_generation_prompt=True)
        for q in questions
    }
    predicted: dict[str, list[str]] = {q.name: [] for q in questions}
    for start in tqdm(range(0, len(samples), batch_size), desc="vision probe", disable=not progress):
        batch = samples[start : start + batch_size]
        images = [encode_observation(s.frames[-observation.frames :], observation, game) for s in batch]
        for q in questions:
            scores = score_continuations(model, processor, prompts[q.name], images, [option_text(o) for o in q.options])
            predicted[q.name] += [q.options[i] for i in scores.argmax(dim=-1).tolist()]
    return {q.name: accuracy_and_chance(predicted[q.name], answer_key(q, samples, game)) for q in questions}


def run_vision_probe(
    model_path: str,
    *,
    game: Game | str = "ALE/Pong-v5",
    frames: int = 500,
    seed: int = DEFAULT_PROBE_SEED,
    observation: ObservationConfig | None = None,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Probe a saved model on ``frames`` held-out frames: {question: {"accuracy", "chance", "n"}}."""
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    game = get_game(game)
    if not game.questions:
        raise ValueError(f"the vision probe asks about what the RAM says; no questions are known for {game.name}")
    observation = observation or observation_for(model_path)
    model, processor = load_model(model_path, device)
    samples = collect_probe_frames(game, frames, seed, history=observation.frames)
    return probe_model(model, processor, samples, observation, game=game, batch_size=batch_size, progress=progress)


def format_probe_table(results: dict[str, dict[str, dict]]) -> str:
    """A markdown table of probe results: one column per model, accuracy (chance)."""
    names = list(results)
    questions = list(next(iter(results.values())))
    lines = ["| question | " + " | ".join(names) + " | chance | n |", "|---" * (len(names) + 3) + "|"]
    for q in questions:
        cells = [f"{results[m][q]['accuracy']}" for m in names]
        first = results[names[0]][q]
        lines.append(f"| {q} | " + " | ".join(cells) + f" | {first['chance']} | {first['n']} |")
    return "\n".join(lines)
