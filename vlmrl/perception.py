"""Perception pre-training: a model is taught to see a game before it is taught to play it.

A short pre-training on frames of varied play (``vlmrl.rollout.varied_play``) with targets read
from the RAM only: a dense caption of what the observation shows (``Game.caption_tokens``) or one
of the vision probe's questions (``Game.questions``). It never shows an action label or an action
name: the model learns to see, not to play (FACTS: a tiny model that sees learns to act from few
corrections). The answer key, captions and questions are the game's (``vlmrl.games.pong``,
``vlmrl.games.breakout``). One pre-training may mix several games' frames: each sample is asked its
own game's caption or questions, about its own game's observation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch

from vlmrl.games import Game
from vlmrl.observation import ObservationConfig, encode_observation
from vlmrl.prompts import observation_preamble, option_text, question_messages
from vlmrl.rollout import envs_for, varied_play

# Episode seeds of the pre-training data start here (+ 10,000 per build seed), far from the
# probe's default held-out seeds (12345 + i): no probe frame comes from a training episode.
PRETRAIN_SEED_BASE = 1_000_000_000


def perception_texts(game: Game) -> list[str]:
    """The prompts and answers of the probe and the pre-training (for a tokenizer's corpus)."""
    texts = []
    for encoding, frames in (("motion", 2), ("rgb", 2), ("rgb", 1)):
        preamble = observation_preamble(ObservationConfig(frames=frames, encoding=encoding))
        texts += [preamble + game.caption_prompt, *(preamble + q.text for q in game.questions)]
    for q in game.questions:
        texts += [option_text(o) for o in q.options]
    return texts


# --- perception pre-training --------------------------------------------------------------------


@dataclass
class PerceptionData:
    """Encoded observations (uint8, [N, images, H, W, 3]) and their answer keys."""

    images: np.ndarray
    scenes: list[Any]
    game: Game

    def __len__(self) -> int:
        return len(self.scenes)


def collect_perception_data(
    n: int,
    observation: ObservationConfig,
    *,
    game: Game,
    seed: int = PRETRAIN_SEED_BASE,
    keep_prob: float = 0.5,
    progress: bool = False,
) -> PerceptionData:
    """``n`` observations of varied play encoded exactly as the agent encodes them."""
    from tqdm.auto import tqdm

    frames_needed = max(observation.frames, 2)  # the previous frame's RAM gives the direction
    images = None
    scenes = []
    play = varied_play(
        game, seed=seed, history=frames_needed, keep_prob=keep_prob, num_envs=envs_for(n, keep_prob)
    )
    for i, item in enumerate(tqdm(islice(play, n), total=n, desc="perception frames", disable=not progress)):
        encoded = [np.asarray(im) for im in encode_observation(item.frames[-observation.frames:], observation, game)]
        if images is None:
            images = np.empty((n, len(encoded), *encoded[0].shape), dtype=np.uint8)
        images[i] = np.stack(encoded)
        scenes.append(item.scene(game))
    play.close()
    return PerceptionData(images if images is not None else np.empty((0,), np.uint8), scenes, game)


WARMUP_TARGETS = ("questions", "questions+positions", "questions+paddle")
PADDLE_POSITIONS = ("paddle_row", "paddle_col")  # the scenes' fields "questions+paddle" regresses (Pong, Breakout)


@dataclass
class PretrainConfig:
    """The perception pre-training recipe (FACTS: 'Teaching the tiny model to see first works')."""

    frames: int = 30_000  # observations of varied play
    # Passes over them: 1.5 (1,407 steps) built in 8.3 minutes on one core of a shared CPU and
    # scored 0.95 on above/below on held-out frames.
    epochs: float = 1.5
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    caption_fraction: float = 0.5  # the rest of the samples ask one of the probe's questions ...
    # ... in these proportions (relative; questions not named weigh 1): above/below is what the
    # agent needs most, and the question the build is judged on.
    question_weights: dict[str, float] = field(default_factory=lambda: {"above_below": 2.0})
    seed: int = 0
    # Caption also where the ball will cross the paddle's column and where the paddle would come
    # to rest (``physics_tokens``): what the oracle's decisions turn on, still no action.
    physics_caption: bool = False
    # Steps of a warm-up of the vision tower alone before the captions (at most the captions' own
    # steps): one linear answer per probe question on the tower's pooled patch features, thrown away
    # afterwards. Through the language model alone the tower never learnt which way the ball moves
    # horizontally (probe 0.73, chance 0.69); with 1,000 steps of warm-up it answers 0.95 (README,
    # "What the model does not see").
    vision_warmup_steps: int = 1000
    # What the warm-up teaches besides the questions: "positions" adds a regression per whole-number
    # field of the game's scene (Pong: ball and paddle rows, the ball's column, where the ball will
    # cross your column, where the teacher aims, where your paddle would rest), standardised.
    vision_warmup_targets: str = "questions"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("pretrain frames, epochs and batch_size must be positive")
        if self.vision_warmup_steps < 0:
            raise ValueError(f"vision_warmup_steps must be non-negative, got {self.vision_warmup_steps}")
        if self.vision_warmup_targets not in WARMUP_TARGETS:
            raise ValueError(f"vision_warmup_targets must be one of {', '.join(WARMUP_TARGETS)}, "
                             f"got {self.vision_warmup_targets!r}")
        if not 0.0 <= self.caption_fraction <= 1.0:
            raise ValueError(f"caption_fraction must be in [0, 1], got {self.caption_fraction}")
        if any(w < 0 for w in self.question_weights.values()):
            raise ValueError(f"question_weights must be non-negative, got {self.question_weights}")

    @classmethod
    def for_games(cls, games: Sequence[Game], **settings) -> PretrainConfig:
        """The recipe for these games: each game's key question weighs 2 (for Pong alone, the default),
        unless ``question_weights`` is given, and the vision warm-up runs its default steps per game (two games
        share the warm-up's questions: at 1,000 steps the two-game base read Pong's direction 0.877, at 2,000
        0.944, the Pong base 0.952; README, *Breakout*), unless ``vision_warmup_steps`` is given."""
        weights = settings.pop("question_weights", None)
        if weights is None:
            weights = {g.key_question: 2.0 for g in games if g.key_question}
        if settings.get("vision_warmup_steps") is None:  # the tower learns every game's questions
            settings["vision_warmup_steps"] = cls.vision_warmup_steps * len(games)
        return cls(question_weights=weights, **settings)

    def check_questions(self, games: Game | Sequence[Game]) -> None:
        """The weights must name questions of the game (of one of the games)."""
        games = [games] if isinstance(games, Game) else games
        names = list(dict.fromkeys(q.name for g in games for q in g.questions))
        if set(self.question_weights) - set(names):
            raise ValueError(f"question_weights must be weights of {names}, got {self.question_weights}")

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.frames * self.epochs / self.batch_size))

    @property
    def warmup_steps_run(self) -> int:
        """The vision warm-up's steps: as configured, but never more than the pre-training's own."""
        return min(self.vision_warmup_steps, self.steps)


@dataclass
class PretrainResult:
    steps: int
    samples: int
    seconds: float
    first_loss: float
    final_loss: float  # mean of the last 50 steps
    pixels: str  # how pixel values were made: the processor, or /255 after checking it matches the processor
    losses: list[float] = field(repr=False)
    vision_warmup_steps: int = 0  # the vision warm-up's steps run
    vision_warmup_final_loss: float | None = None  # mean of the warm-up's last 50 steps (None: no warm-up)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("losses")
        if not d["vision_warmup_steps"]:
            d.pop("vision_warmup_steps")
            d.pop("vision_warmup_final_loss")
        return d


class PixelPath:
    """Pixel values as the processor makes them, without calling it per batch when it is the
    identity up to /255 (checked on real frames): the processor costs as much as a forward."""

    def __init__(self, processor, sample_images: np.ndarray) -> None:
        self.processor = processor
        self.fast = False
        if len(sample_images):
            fast = self._fast(sample_images)
            slow = self._slow(sample_images)
            self.fast = fast.shape == slow.shape and torch.equal(fast, slow)

    @staticmethod
    def _fast(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).permute(0, 1, 4, 2, 3).float() / 255.0

    def _slow(self, images: np.ndarray) -> torch.Tensor:
        from PIL import Image

        pil = [[Image.fromarray(im) for im in obs] for obs in images]
        return self.processor.image_processor(pil, return_tensors="pt")["pixel_values"]

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        return self._fast(images) if self.fast else self._slow(images)


def _task_prompts(processor, observation: ObservationConfig, sample: np.ndarray, game: Game) -> dict[str, list[int]]:
    """Token ids of each task's prompt, images expanded by the processor itself."""
    from PIL import Image

    images = [Image.fromarray(im) for im in sample]
    prompts = {"caption": game.caption_prompt, **{q.name: q.text for q in game.questions}}
    ids = {}
    for task, text in prompts.items():
        chat = processor.apply_chat_template(question_messages(text, observation), add_generation_prompt=True)
        ids[task] = processor(text=[chat], images=[images], return_tensors="pt")["input_ids"][0].tolist()
    return ids


def _target_ids(tokenizer, scenes: list, game: Game, physics: bool = False) -> dict[str, list[list[int] | None]]:
    """Per task, each sample's answer token ids (None where the question has no answer)."""
    eos = tokenizer.eos_token_id
    piece_ids: dict[str, int] = {}

    def one_token(piece: str) -> int:
        if piece not in piece_ids:
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(
                    f"caption piece {piece!r} is {len(ids)} tokens in this tokenizer; build the tokenizer with "
                    "the game's caption_vocabulary and perception_texts() (vlmrl.tiny_model does)"
                )
            piece_ids[piece] = ids[0]
        return piece_ids[piece]

    caption = [[one_token(p) for p in game.caption_tokens(s, physics)] + [eos] for s in scenes]
    targets: dict[str, list[list[int] | None]] = {"caption": caption}
    for q in game.questions:
        encoded = {o: tokenizer(option_text(o), add_special_tokens=False)["input_ids"] + [eos] for o in q.options}
        targets[q.name] = [None if (a := q.answer(s)) is None else encoded[a] for s in scenes]
    return targets


def _answer_loss(model, seqs: list[list[int]], prompt_lens: list[int], pixel_values: torch.Tensor, pad: int):
    """Mean cross-entropy over the answer tokens. Sequences are padded on the left so every
    answer ends at the last position: only the last few positions' logits are computed
    (the vocabulary projection of the whole prompt would cost ~10% of the step for nothing)."""
    length = max(map(len, seqs))
    answer_len = max(len(seq) - n for seq, n in zip(seqs, prompt_lens, strict=True))
    input_ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), answer_len), -100, dtype=torch.long)
    for row, (seq, n_prompt) in enumerate(zip(seqs, prompt_lens, strict=True)):
        input_ids[row, length - len(seq) :] = torch.tensor(seq)
        attention_mask[row, length - len(seq) :] = 1
        answer = seq[n_prompt:]
        labels[row, answer_len - len(answer) :] = torch.tensor(answer)
    # Positions count from each sequence's first real token, as they do unpadded at inference.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        pixel_values=pixel_values,
        logits_to_keep=answer_len + 1,
    ).logits[:, :-1]  # position t predicts token t + 1
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1))


class _GameTasks:
    """One game's part of a pre-training: its tasks' prompts, each sample's targets, the task odds."""

    def __init__(self, processor, observation: ObservationConfig, data: PerceptionData, config: PretrainConfig):
        self.prompts = _task_prompts(processor, observation, data.images[0], data.game)
        self.targets = _target_ids(processor.tokenizer, data.scenes, data.game, config.physics_caption)
        self.tasks = list(self.prompts)  # "caption" first, then the questions
        weights = np.array([config.question_weights.get(t, 1.0) for t in self.tasks[1:]])
        odds = np.array([config.caption_fraction, *((1.0 - config.caption_fraction) * weights / weights.sum())])
        # What numpy's Generator.choice(p=odds) does with one uniform draw: the same draws, the same tasks.
        self.cdf = odds.cumsum()
        self.cdf /= self.cdf[-1]

    def sample(self, i: int, draw: float) -> tuple[list[int], int]:
        """Sample ``i``'s sequence (prompt + answer) for a uniform ``draw``, and its prompt's length."""
        task = self.tasks[int(self.cdf.searchsorted(draw, side="right"))]
        target, prompt = self.targets[task][i], self.prompts[task]
        if target is None:  # the question has no answer here (no ball): caption instead
            target, prompt = self.targets["caption"][i], self.prompts["caption"]
        return prompt + target, len(prompt)


def pool_patches(features: torch.Tensor) -> torch.Tensor:
    """A vision tower's patch features (batch, patches, hidden) -> (batch, 2 * hidden): their mean and max."""
    return torch.cat([features.mean(1), features.amax(1)], -1)


class _TowerAnswers(torch.nn.Module):
    """Linear answers to every game's questions (and, as ``targets`` says, regressions on its scenes'
    positions, or on the paddle's alone) from the vision tower's patch features, mean- and max-pooled
    over the patches: the warm-up's heads."""

    def __init__(self, hidden: int, parts: Sequence[PerceptionData], targets: str = "questions") -> None:
        super().__init__()
        # (part, target, labels per sample): a question's answer index (-1 where it has no answer there),
        # or a position standardised over the part (NaN where the scene has none)
        self.keys: list[tuple[int, str, np.ndarray]] = []
        heads = {}
        for p, part in enumerate(parts):
            for q in part.game.questions:
                answers = [q.answer(s) for s in part.scenes]
                labels = np.array([-1 if a is None else q.options.index(a) for a in answers], dtype=np.int64)
                heads[f"{p}_{q.name}"] = torch.nn.Linear(2 * hidden, len(q.options))
                self.keys.append((p, q.name, labels))
            for name, values in (_positions(part.scenes) if targets != "questions" else {}).items():
                if targets == "questions+paddle" and name not in PADDLE_POSITIONS:
                    continue
                heads[f"{p}_{name}"] = torch.nn.Linear(2 * hidden, 1)
                self.keys.append((p, name, values))
        self.heads = torch.nn.ModuleDict(heads)

    def loss(self, features: torch.Tensor, owner: np.ndarray, local: np.ndarray) -> torch.Tensor:
        pooled = pool_patches(features)
        total, count = pooled.new_zeros(()), 0
        for p, name, labels in self.keys:
            mine = owner == p
            picked = labels[np.where(mine, local, 0)]  # this part's labels; other parts' rows masked below
            if labels.dtype == np.int64:
                target = np.where(mine, picked, -1)
                if (target >= 0).any():
                    logits = self.heads[f"{p}_{name}"](pooled)
                    total = total + torch.nn.functional.cross_entropy(
                        logits, torch.from_numpy(target), ignore_index=-1)
                    count += 1
            else:
                target = np.where(mine, picked, np.nan)
                known = torch.from_numpy(~np.isnan(target))
                if known.any():
                    guess = self.heads[f"{p}_{name}"](pooled)[:, 0]
                    total = total + torch.nn.functional.smooth_l1_loss(
                        guess[known], torch.from_numpy(target).float()[known])
                    count += 1
        return total / max(count, 1)


def _positions(scenes: Sequence[Any]) -> dict[str, np.ndarray]:
    """Each whole-number field of the scenes (dataclasses), standardised (float64, NaN where None)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(scenes[0]):
        values = [getattr(s, f.name) for s in scenes]
        if any(isinstance(v, bool) or not (v is None or isinstance(v, int)) for v in values):
            continue
        array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        known = array[~np.isnan(array)]
        if len(known) < 2 or known.std() == 0:
            continue
        out[f.name] = (array - known.mean()) / known.std()
    return out


def _batches(rng: np.random.Generator, n: int, batch_size: int) -> Iterator[np.ndarray]:
    """Sample indices a batch at a time, endlessly: epochs run into each other, a permutation at a time."""
    order = np.empty(0, dtype=np.int64)
    while True:
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def _warm_up_vision(model, parts, batch_images, pixels, owner, local, config: PretrainConfig, rng,
                    progress: bool = False) -> list[float]:
    """Trains the vision tower alone on the probe's questions (``config.warmup_steps_run`` steps); the
    heads are dropped, the tower keeps what it learnt. Returns the losses."""
    from tqdm.auto import tqdm

    tower = model.model.vision_model
    answers = _TowerAnswers(tower.config.hidden_size, parts, config.vision_warmup_targets)
    params = [*tower.parameters(), *answers.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    losses = []
    tower.train()
    batches = _batches(rng, len(owner), config.batch_size)
    bar = tqdm(range(config.warmup_steps_run), desc="vision warm-up", disable=not progress)
    for step in bar:
        idx = next(batches)
        images = pixels(batch_images(idx))
        features = tower(pixel_values=images.flatten(0, 1)).last_hidden_state
        features = features.reshape(len(idx), -1, features.size(-1))  # an observation's images' patches together
        loss = answers.loss(features, owner[idx], local[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    return losses


def pretrain_perception(
    model,
    processor,
    data: PerceptionData | Sequence[PerceptionData],
    observation: ObservationConfig,
    config: PretrainConfig | None = None,
    *,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Teaches ``model`` to see: a dense caption (or one probe question) per frame, loss on
    every answer token, AdamW with warm-up and cosine decay. Targets come from the RAM only.

    ``data`` may be several games' frames (one ``PerceptionData`` each, encoded with the same
    observation settings): they are shuffled together, each sample asked about in its own game's words.

    ``callback(step, loss)`` runs after each optimizer step (e.g. to probe a learning curve;
    it must leave the model in train mode)."""
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    config = config or PretrainConfig()
    parts = [data] if isinstance(data, PerceptionData) else list(data)
    if not parts or any(len(part) == 0 for part in parts):
        raise ValueError("no perception data to pre-train on (a game without frames?)")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    config.check_questions([part.game for part in parts])
    games = [_GameTasks(processor, observation, part, config) for part in parts]
    # Sample k of the whole set is sample local[k] of part owner[k]; the parts are not copied into one
    # array (30,000 observations are 1.5 GB).
    owner = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
    local = np.concatenate([np.arange(len(part)) for part in parts])

    def batch_images(idx: np.ndarray) -> np.ndarray:
        if len(parts) == 1:
            return parts[0].images[idx]
        return np.stack([parts[owner[k]].images[local[k]] for k in idx])

    pixels = PixelPath(processor, np.concatenate([part.images[:8] for part in parts]))
    pad = processor.tokenizer.pad_token_id
    warmup = _warm_up_vision(model, parts, batch_images, pixels, owner, local, config,
                             np.random.default_rng(config.seed + 1), progress) if config.warmup_steps_run else []

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    batches = _batches(rng, len(owner), config.batch_size)
    bar = tqdm(range(config.steps), desc="perception pre-training", disable=not progress)
    for step in bar:
        idx = next(batches)
        seqs, prompt_lens = [], []
        for k, draw in zip(idx, rng.random(len(idx)), strict=True):
            seq, prompt_len = games[owner[k]].sample(local[k], draw)
            seqs.append(seq)
            prompt_lens.append(prompt_len)
        loss = _answer_loss(model, seqs, prompt_lens, pixels(batch_images(idx)), pad)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    return PretrainResult(
        steps=config.steps,
        samples=config.steps * config.batch_size,
        seconds=round(time.perf_counter() - start, 1),
        first_loss=round(losses[0], 4),
        final_loss=round(float(np.mean(losses[-50:])), 4),
        pixels="uint8/255, checked equal to the processor's" if pixels.fast else "processor",
        vision_warmup_steps=len(warmup),
        vision_warmup_final_loss=round(float(np.mean(warmup[-50:])), 4) if warmup else None,
        losses=losses,
    )
