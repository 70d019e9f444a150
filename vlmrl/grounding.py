"""What a model says it sees: its answers to the game's questions and its caption, by likelihood.

The grounded reflector (``vlmrl.reflectors.GroundedReflector``) asks a model that cannot write free
text about frames; these are its two ways of asking, both scored with ``vlmrl.scoring`` (the answer
is the option the model finds most likely, never generated text):

- ``ask``: the game's questions (``Game.questions``, the vision probe's), one forward per question;
- ``read_captions``: the game's perception caption (``Game.caption_prompt``), read slot by slot:
  each slot's options are scored after the model's own answers to the slots before it, as the
  caption was learned (``Game.caption_slots``). Pong's caption says where the ball and your paddle are
  in 16 row buckets, which a two-word question cannot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from vlmrl.games import Game, Question
from vlmrl.observation import ObservationConfig
from vlmrl.prompts import option_text, question_messages
from vlmrl.scoring import score_continuations


def _chat(processor, text: str, observation: ObservationConfig) -> str:
    return processor.apply_chat_template(question_messages(text, observation), add_generation_prompt=True)


def ask(
    model, processor, observation: ObservationConfig, images: list[list], questions: Sequence[Question]
) -> list[dict[str, str]]:
    """Each observation's answer to each question: ``[{question name: option}]``, by likelihood."""
    answers: list[dict[str, str]] = [{} for _ in images]
    for q in questions:
        scores = score_continuations(model, processor, _chat(processor, q.text, observation), images,
                                     [option_text(o) for o in q.options])
        for row, best in zip(answers, scores.argmax(dim=-1).tolist(), strict=True):
            row[q.name] = q.options[best]
    return answers


_NUMBERED = re.compile(r"^<[a-z]+(\d+)>$")  # a numbered piece, e.g. a row bucket "<y7>"


def read_captions(
    model, processor, observation: ObservationConfig, images: list[list], game: Game, slots: int | None = None,
    expected: bool = False,
) -> list[dict]:
    """Each observation's caption, ``[{slot name: piece}]``: the first ``slots`` slots (default all).

    With ``expected``, a slot of numbered pieces (row and column buckets) also gets ``<slot>_expected``:
    the mean bucket number under the model's probabilities over those pieces alone, a reading finer than
    one bucket where the model hesitates between neighbours (the chosen piece is still the likeliest).
    """
    if not game.caption_prompt or not game.caption_slots:
        raise ValueError(f"no perception caption is known for {game.name}; the grounded reflector reads one")
    chat = _chat(processor, game.caption_prompt, observation)
    prefixes = [chat] * len(images)
    captions: list[dict] = [{} for _ in images]
    for name, pieces in game.caption_slots[:slots]:
        scores = score_continuations(model, processor, prefixes, images, list(pieces))
        numbered = [(k, int(m.group(1))) for k, piece in enumerate(pieces) if (m := _NUMBERED.match(piece))]
        if expected and numbered:
            columns = torch.tensor([k for k, _ in numbered])
            weights = torch.softmax(scores[:, columns].float(), dim=-1)
            means = (weights * torch.tensor([n for _, n in numbered], dtype=torch.float32)).sum(-1).tolist()
        for i, best in enumerate(scores.argmax(dim=-1).tolist()):
            captions[i][name] = pieces[best]
            prefixes[i] += pieces[best]
            if expected and numbered:
                captions[i][f"{name}_expected"] = round(means[i], 3)
    return captions
