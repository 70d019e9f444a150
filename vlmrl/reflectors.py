"""Reflectors: given a step the agent played, say what it should have done and why.

All share one batched interface, ``reflect(items) -> list[Reflection | None]`` (None: the
reflector's answer was unusable and is dropped). ``self`` and ``model:<id>`` ask a VLM to write
(optionally shown the outcome: hindsight); ``grounded`` asks a VLM the game's questions and lets the
game's rules turn its answers into the correction; ``self-imitation`` keeps the action taken (on steps
that went well, chosen by the reflection phase); ``oracle`` reads the RAM.

A reflector says what it needs to see besides the step: ``outcome_views`` (observations at and
before the outcome step) and ``later_views`` (observations of the steps after this one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from vlmrl.games import Game
from vlmrl.games.base import GroundedAnswers, decide_batch
from vlmrl.observation import ObservationConfig, encode_observation
from vlmrl.prompts import REFLECTION_KEYS, json_objects, parse_answer, reflection_messages
from vlmrl.scoring import to_model


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
    # Hindsight, from the recorded episode (empty unless the reflector asks for them):
    prev_frames: list[np.ndarray] | None = None  # the previous step's observation frames
    later_frames: list[list[np.ndarray]] = field(default_factory=list)  # steps t+1, t+2, ...
    outcome_frames: list[list[np.ndarray]] = field(default_factory=list)  # the outcome step, then the one before
    outcome_description: str = ""
    outcome_steps: int | None = None  # how many steps after this one the outcome came


@dataclass
class Reflection:
    analysis: str
    correct_action: str
    correct_reasoning: str
    raw_output: str = ""


class OracleReflector:
    """The RAM oracle's verdict, in words that name the positions it used."""

    outcome_views = later_views = 0

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
        hindsight: bool = False,
    ) -> None:
        from vlmrl.models import load_processor, load_vlm

        self.name = name
        self.outcome_views = 1 if hindsight else 0  # the outcome frame follows the next frame in the prompt
        self.later_views = 0
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
        outcome = (encode_observation(item.outcome_frames[0], self.observation, self.game)
                   if self.outcome_views and item.outcome_frames else [])
        messages = reflection_messages(
            self.game, self.actions, action_taken=item.action_taken, reasoning=item.reasoning,
            reward=item.reward, return_to_go=item.return_to_go, num_images_now=len(now), num_images_next=len(after),
            num_images_outcome=len(outcome), outcome_description=item.outcome_description,
            outcome_steps=item.outcome_steps,
        )
        return self.processor.apply_chat_template(messages, add_generation_prompt=True), [*now, *after, *outcome]

    @torch.inference_mode()
    def _generate(self, items: list[ReflectionItem], sample: bool) -> list[str]:
        prompts, images = zip(*(self._prompt(i) for i in items), strict=True)
        tokenizer = self.processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            inputs = self.processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        inputs = to_model(inputs, self.model)
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


class GroundedReflector:
    """Self-reflection for a model that answers questions but cannot write: perception, then rules.

    The model answers, by likelihood (``vlmrl.grounding``), the game's caption of the step's
    observation and the previous one (where the ball and your paddle are), the game's direction
    question on this step and the next ones, and the caption of the outcome (where the ball was when
    it reached your column). The game's rules (``Game.grounded_correction``, the controls stated in
    the acting prompt) turn those answers into the corrected action; the analysis quotes the answers.
    Nothing here reads the RAM.
    """

    def __init__(self, name: str, model_path: str, game: Game, observation: ObservationConfig) -> None:
        from vlmrl.probe import load_model

        rules = getattr(game, "grounded_rules", None)
        if rules is None or not game.caption_slots:
            raise ValueError(
                f"no grounded reflection is known for {game.name}: it needs the game's caption, questions and a "
                "mapping from answers to actions (Pong has one); use the oracle, self or model: reflector"
            )
        self.name = name
        self.game = game
        self.rules = rules
        self.observation = observation
        self.model, self.processor = load_model(model_path)
        self.direction = next((q for q in game.questions if q.name == rules.direction_question), None)
        if self.direction is None:
            raise ValueError(f"{game.name} has no question {rules.direction_question!r} for the grounded reflector")
        self.outcome_views = rules.outcome_looks
        self.later_views = rules.direction_looks - 1
        self.invalid = 0

    def _encode(self, frames: list[np.ndarray]) -> list:
        return encode_observation(frames, self.observation, self.game)

    def answers(self, items: list[ReflectionItem]) -> list[GroundedAnswers]:
        """What the model says about each item's step, its previous step, later steps and outcome."""
        from vlmrl.grounding import ask, read_captions

        obs, game, n = self.observation, self.game, len(items)
        soft = self.rules.expected_rows
        now = read_captions(self.model, self.processor, obs, [self._encode(i.frames) for i in items], game,
                            expected=soft)
        # Only the paddle's row is used from the other captions: four slots (it is the fourth).
        before = read_captions(self.model, self.processor, obs,
                               [self._encode(i.prev_frames or i.frames) for i in items], game, slots=4, expected=soft)
        outcome: list[list[dict]] = [[] for _ in items]
        for k in range(self.outcome_views):
            views = [(j, i.outcome_frames[k]) for j, i in enumerate(items) if len(i.outcome_frames) > k]
            if views:
                read = read_captions(self.model, self.processor, obs, [self._encode(f) for _, f in views], game,
                                     slots=4, expected=soft)
                for (j, _), caption in zip(views, read, strict=True):
                    outcome[j].append(caption)
        directions: list[list[str]] = [[] for _ in items]
        for k in range(self.later_views + 1):
            views = [(j, i.frames if k == 0 else i.later_frames[k - 1]) for j, i in enumerate(items)
                     if k == 0 or len(i.later_frames) >= k]
            said = ask(self.model, self.processor, obs, [self._encode(f) for _, f in views], [self.direction])
            for (j, _), answer in zip(views, said, strict=True):
                directions[j].append(answer[self.direction.name])
        return [GroundedAnswers(now[j], before[j], outcome[j], directions[j], items[j].action_taken)
                for j in range(n)]

    def reflect(self, items: list[ReflectionItem]) -> list[Reflection | None]:
        results = []
        for answers in self.answers(items):
            cls, analysis = self.game.grounded_correction(answers)
            action = self.game.class_actions[cls]
            raw = json.dumps({"now": answers.now, "before": answers.before, "outcome": answers.outcome,
                              "directions": answers.directions})
            verdict = "stay" if cls == "stay" else f"move {cls}"
            results.append(Reflection(analysis, action, f"I should {verdict} ({action}).", raw))
        return results


class SelfImitationReflector:
    """The control: no reflection, the action taken is the correction (on steps that went well).

    The reflection phase gives it the steps whose outcome was good (``select_good_steps``), as
    advantage-filtered SFT does (VLM Q-learning, arXiv 2505.03181); it asks no model.
    """

    name = "self-imitation"
    outcome_views = later_views = 0

    def __init__(self) -> None:
        self.invalid = 0

    def reflect(self, items: list[ReflectionItem]) -> list[Reflection | None]:
        return [Reflection(f"This move led toward a good outcome (discounted return {i.return_to_go:+.2f}): keep it.",
                           i.action_taken, i.reasoning) for i in items]


REFLECTOR_NAMES = "self, oracle, model:<path or Hub id>, grounded, grounded:<path or Hub id> or self-imitation"


def build_reflector(spec: str, *, game: Game, actions: list[str], observation: ObservationConfig,
                    acting_model: str | None, max_new_tokens: int = 128, retries: int = 0,
                    hindsight: bool = False):
    """``self`` (the model that played), ``oracle``, ``model:<path or Hub id>``, ``grounded`` (the model
    that played, answering questions), ``grounded:<path or Hub id>`` (e.g. the frozen base) or
    ``self-imitation``. ``hindsight``: the writing reflectors are also shown the outcome frame."""
    if spec == "self-imitation":
        return SelfImitationReflector()
    if spec.startswith("grounded:") and len(spec) > len("grounded:"):
        return GroundedReflector(spec, spec[len("grounded:"):], game, observation)
    if spec == "grounded":
        if not acting_model or acting_model in ("random", "oracle"):
            raise ValueError(
                f"--reflector grounded needs episodes played by a model, these were played by {acting_model!r}; "
                "pass --model, or use grounded:<path>"
            )
        return GroundedReflector("grounded", acting_model, game, observation)
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
                              max_new_tokens=max_new_tokens, retries=retries, hindsight=hindsight)
    if spec.startswith("model:") and len(spec) > len("model:"):
        path = spec[len("model:"):]
        return ModelReflector(spec, path, game, actions, observation, max_new_tokens=max_new_tokens, retries=retries,
                              hindsight=hindsight)
    raise ValueError(f"unknown reflector {spec!r}: use {REFLECTOR_NAMES}")
