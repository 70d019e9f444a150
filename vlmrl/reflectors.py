"""Reflectors: given a step the agent played, say what it should have done and why.

All share one batched interface, ``reflect(items) -> list[Reflection | None]`` (None: the
reflector's answer was unusable and is dropped). ``self`` and ``model:<id>`` ask a VLM;
``oracle`` reads the RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlmrl.games import Game
from vlmrl.games.base import decide_batch
from vlmrl.observation import ObservationConfig, encode_observation
from vlmrl.prompts import REFLECTION_KEYS, json_objects, parse_answer, reflection_messages


@dataclass
class ReflectionItem:
    """One step to reflect on: what the agent saw, did and got, and what it saw next."""

    frames: list[np.ndarray]
    next_frames: list[np.ndarray]
    ram: np.ndarray
    prev_ram: np.ndarray | None
    action_taken: str
    reasoning: str
    reward: float
    return_to_go: float


@dataclass
class Reflection:
    analysis: str
    correct_action: str
    correct_reasoning: str
    raw_output: str = ""


class OracleReflector:
    """The RAM oracle's verdict, in words that name the positions it used."""

    def __init__(self, game: Game) -> None:
        self.name = "oracle"
        self.oracle = game.oracle()
        self.invalid = 0

    def reflect(self, items: list[ReflectionItem]) -> list[Reflection | None]:
        decisions = decide_batch(self.oracle, [i.ram for i in items], [i.prev_ram for i in items])
        return [Reflection(d.analysis, d.action, d.reasoning) for d in decisions]


class ModelReflector:
    """A VLM (the acting model itself, or a larger teacher) reflects by free generation."""

    def __init__(
        self,
        name: str,
        model_path: str,
        game: Game,
        actions: list[str],
        observation: ObservationConfig,
        *,
        max_new_tokens: int = 128,
        retries: int = 0,
    ) -> None:
        from vlmrl.models import load_processor, load_vlm

        self.name = name
        self.game = game
        self.actions = actions
        self.observation = observation
        self.model = load_vlm(model_path)
        self.processor = load_processor(model_path, observation)
        self.max_new_tokens = max_new_tokens
        self.retries = retries
        self.invalid = 0

    def _prompt(self, item: ReflectionItem) -> tuple[str, list]:
        now = encode_observation(item.frames, self.observation, self.game)
        after = encode_observation(item.next_frames, self.observation, self.game)
        messages = reflection_messages(
            self.game, self.actions, action_taken=item.action_taken, reasoning=item.reasoning,
            reward=item.reward, return_to_go=item.return_to_go, num_images_now=len(now), num_images_next=len(after),
        )
        return self.processor.apply_chat_template(messages, add_generation_prompt=True), [*now, *after]

    @torch.inference_mode()
    def _generate(self, items: list[ReflectionItem], sample: bool) -> list[str]:
        prompts, images = zip(*(self._prompt(i) for i in items), strict=True)
        tokenizer = self.processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            inputs = self.processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        device, dtype = next(self.model.parameters()).device, next(self.model.parameters()).dtype
        inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, do_sample=sample, pad_token_id=tokenizer.pad_token_id
        )
        return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def _parse(self, text: str) -> Reflection | None:
        parsed = parse_answer(text, self.actions, keys=("correct_action", "correct_reasoning"))
        if not parsed.valid:
            return None
        analysis = ""
        for obj in json_objects(text[:4000]):
            if isinstance(obj.get(REFLECTION_KEYS[0]), str):
                analysis = obj[REFLECTION_KEYS[0]]
                break
        return Reflection(analysis, parsed.action, parsed.reasoning, text)

    def reflect(self, items: list[ReflectionItem]) -> list[Reflection | None]:
        results: list[Reflection | None] = [None] * len(items)
        pending = list(range(len(items)))
        for attempt in range(self.retries + 1):
            texts = self._generate([items[i] for i in pending], sample=attempt > 0)
            still = []
            for i, text in zip(pending, texts, strict=True):
                results[i] = self._parse(text)
                if results[i] is None:
                    still.append(i)
            pending = still
            if not pending:
                break
        self.invalid += len(pending)
        return results


REFLECTOR_NAMES = "self, oracle or model:<path or Hub id>"


def build_reflector(spec: str, *, game: Game, actions: list[str], observation: ObservationConfig,
                    acting_model: str | None, max_new_tokens: int = 128, retries: int = 0):
    """``self`` (the model that played), ``oracle``, or ``model:<path or Hub id>``."""
    if spec == "oracle":
        if not game.has_oracle:
            raise ValueError(
                f"the oracle reflector needs a game with an oracle; {game.id} has none (use self or model:)")
        return OracleReflector(game)
    if spec == "self":
        if not acting_model or acting_model in ("random", "oracle"):
            raise ValueError(
                f"--reflector self needs episodes played by a model, these were played by {acting_model!r}; "
                "pass --model, or use oracle or model:<path>"
            )
        return ModelReflector("self", acting_model, game, actions, observation,
                              max_new_tokens=max_new_tokens, retries=retries)
    if spec.startswith("model:") and len(spec) > len("model:"):
        path = spec[len("model:"):]
        return ModelReflector(spec, path, game, actions, observation, max_new_tokens=max_new_tokens, retries=retries)
    raise ValueError(f"unknown reflector {spec!r}: use {REFLECTOR_NAMES}")
