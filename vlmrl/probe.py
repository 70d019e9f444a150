"""The vision probe: can a model see what the Pong frame shows?

Each question of ``vlmrl.perception.QUESTIONS`` (is the ball above or below your paddle,
which way is it moving, ...) is asked as a chat prompt with the observation's image(s);
the model's answer is the option it finds most likely after ``Assistant:`` (one batched
forward per question and batch of frames), and the key comes from the RAM. Accuracy is
reported beside chance, the majority answer's rate on the same frames, so a model that
always says "below" scores its chance and no more. Frames come from varied play on
held-out seeds (12345 + i by default; pre-training uses seeds from 1e9).

Works for any model loadable with ``AutoModelForImageTextToText`` + ``AutoProcessor``:
the tiny model (its observation config is read from its ``tiny_config.json``) or
SmolVLM-Instruct (two RGB frames at 384 by default).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import torch

from vlmrl.observation import OBSERVATION_FILE, ObservationConfig, encode_observation
from vlmrl.perception import (
    GAME_ID,
    QUESTIONS,
    PlayFrame,
    Question,
    envs_for,
    option_text,
    question_messages,
    varied_play,
)

DEFAULT_PROBE_SEED = 12345
# Two RGB frames at SmolVLM's tile size: the pretrained-vision default (FACTS: one 81-token tile).
DEFAULT_OBSERVATION = ObservationConfig(frames=2, encoding="rgb", crop=False, image_size=384)


def observation_for(model_path: str | Path) -> ObservationConfig:
    """The observation config a model was built or fine-tuned for, else the default.

    The tiny model records it in ``tiny_config.json``; train.py in ``vlmrl_observation.json``.
    """
    tiny = Path(model_path) / "tiny_config.json"
    if tiny.is_file() and (observation := json.loads(tiny.read_text()).get("observation")):
        return ObservationConfig(**observation)
    tuned = Path(model_path) / OBSERVATION_FILE
    if tuned.is_file():
        return ObservationConfig(**json.loads(tuned.read_text()))
    return DEFAULT_OBSERVATION


def configure_processor(processor, model) -> None:
    """One tile per image at the vision tower's size: no splitting into ~17 tiles (FACTS)."""
    image_processor = getattr(processor, "image_processor", None)
    vision = getattr(model.config, "vision_config", None)
    if image_processor is None or not hasattr(image_processor, "do_image_splitting"):
        return
    image_processor.do_image_splitting = False
    if vision is not None and getattr(vision, "image_size", None):
        image_processor.size = {"longest_edge": vision.image_size}
        image_processor.max_image_size = {"longest_edge": vision.image_size}
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"


def load_model(model_path: str | Path, device: str | None = None):
    """(model, processor) in eval mode; bf16 on a GPU, fp32 on CPU."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(model_path)
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).to(device)
    except OSError as err:
        raise ValueError(
            f"could not load a model from {model_path!r} ({err}). Pass a local checkpoint "
            "(`make tiny-model` builds the tiny one) or a Hub id where the Hub is reachable"
        ) from None
    model.eval()
    configure_processor(processor, model)
    return model, processor


def _option_ids(tokenizer, continuations: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(not i for i in ids):
        raise ValueError(f"an answer option tokenizes to nothing: {continuations}")
    return ids


@torch.no_grad()
def score_continuations(
    model,
    processor,
    prompt: str,
    images: list[list],
    continuations: Sequence[str],
    *,
    full_sequence: bool | None = None,
) -> torch.Tensor:
    """Log-likelihood of each continuation after ``prompt`` for each observation: [batch, options].

    When the continuations start with distinct tokens, the first token decides (one forward,
    the last position only); otherwise (or with ``full_sequence=True``) each continuation is
    scored in full (one forward over batch × options rows).
    """
    device = model.device
    option_ids = _option_ids(processor.tokenizer, continuations)
    firsts = [ids[0] for ids in option_ids]
    if full_sequence is None:
        full_sequence = len(set(firsts)) != len(firsts)
    if not full_sequence:
        inputs = processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True)
        inputs = _to(inputs, model)
        logits = model(**inputs, logits_to_keep=1).logits[:, -1].float()
        return torch.log_softmax(logits, dim=-1)[:, torch.tensor(firsts, device=device)].cpu()
    texts = [prompt + c for _ in images for c in continuations]
    repeated = [im for im in images for _ in continuations]
    inputs = _to(processor(text=texts, images=repeated, return_tensors="pt", padding=True), model)
    # Left-padded rows of different lengths: positions count from each row's first real token.
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    longest = max(map(len, option_ids))
    logits = model(**inputs, logits_to_keep=longest + 1).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t+1
    scores = torch.empty(len(texts))
    for row in range(len(texts)):
        ids = option_ids[row % len(continuations)]
        picked = logprobs[row, -len(ids):].gather(-1, torch.tensor(ids, device=device)[:, None])
        scores[row] = picked.sum().cpu()
    return scores.view(len(images), len(continuations))


def _to(inputs, model):
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def answer_key(question: Question, samples: Sequence[PlayFrame], game_id: str = GAME_ID) -> list[str | None]:
    """The right option for each sample from its RAM (None: the question doesn't apply)."""
    return [question.answer(s.scene(game_id)) for s in samples]


def accuracy_and_chance(predicted: Sequence[str], key: Sequence[str | None]) -> dict:
    """Accuracy over the samples with a key, beside the majority key's rate on the same samples."""
    pairs = [(p, k) for p, k in zip(predicted, key, strict=True) if k is not None]
    if not pairs:
        return {"accuracy": None, "chance": None, "n": 0}
    correct = sum(p == k for p, k in pairs)
    majority = Counter(k for _, k in pairs).most_common(1)[0][1]
    return {"accuracy": round(correct / len(pairs), 4), "chance": round(majority / len(pairs), 4), "n": len(pairs)}


def collect_probe_frames(
    game_id: str = GAME_ID, frames: int = 500, seed: int = DEFAULT_PROBE_SEED, history: int = 2
) -> list[PlayFrame]:
    """Held-out frames of varied play, spread over episodes (one step in 20 is kept)."""
    keep_prob = 0.05
    play = varied_play(
        game_id, seed=seed, history=max(history, 2), keep_prob=keep_prob, num_envs=envs_for(frames, keep_prob)
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
    game_id: str = GAME_ID,
    batch_size: int = 32,
    questions: Sequence[Question] = QUESTIONS,
    progress: bool = False,
) -> dict[str, dict]:
    """{question: {"accuracy", "chance", "n"}} for a loaded model on the given samples."""
    from tqdm.auto import tqdm

    prompts = {
        q.name: processor.apply_chat_template(question_messages(q.text, observation), add_generation_prompt=True)
        for q in questions
    }
    predicted: dict[str, list[str]] = {q.name: [] for q in questions}
    for start in tqdm(range(0, len(samples), batch_size), desc="vision probe", disable=not progress):
        batch = samples[start : start + batch_size]
        images = [encode_observation(s.frames[-observation.frames :], observation, game_id) for s in batch]
        for q in questions:
            scores = score_continuations(model, processor, prompts[q.name], images, [option_text(o) for o in q.options])
            predicted[q.name] += [q.options[i] for i in scores.argmax(dim=-1).tolist()]
    return {q.name: accuracy_and_chance(predicted[q.name], answer_key(q, samples, game_id)) for q in questions}


def run_vision_probe(
    model_path: str,
    *,
    game_id: str = GAME_ID,
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
    observation = observation or observation_for(model_path)
    model, processor = load_model(model_path, device)
    samples = collect_probe_frames(game_id, frames, seed, history=observation.frames)
    return probe_model(
        model, processor, samples, observation, game_id=game_id, batch_size=batch_size, progress=progress
    )


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
