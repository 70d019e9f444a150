"""What a Pong frame shows, read from the RAM, and how a model is taught to see it.

Three things share one vocabulary here:
- the answer key: ``scene_from_ram`` turns this step's and the previous step's RAM into
  what the observation shows (ball and paddle rows, which way the ball moves);
- the questions a model must answer from the image (``QUESTIONS``, scored by ``vlmrl.probe``)
  and the dense caption of the perception pre-training (``caption_tokens``);
- ``pretrain_perception``: a short pre-training on frames of varied play with targets from
  the RAM only. It never shows an action label or an action name: the model learns to see,
  not to play (FACTS: a tiny model that sees learns to act from few corrections).

Pixel geometry (measured on ALE/Pong-v5 frames, rows of the cropped playfield 34-193): the
ball's top row is ``ram[54] - 48``, 4 rows tall, its column ``ram[49] - 49``, 2 wide; the
player's paddle top row is ``ram[51] - 47.5`` (±0.5), 16 rows tall, at column 140.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice

import numpy as np
import torch

from vlmrl.env import AtariBatch, game_name
from vlmrl.observation import PLAYFIELD_ROWS, ObservationConfig, encode_observation
from vlmrl.oracle import PADDLE_CENTRE_OFFSET, PongOracle, get_oracle, parse_pong_ram, predict_intercept_y

GAME_ID = "ALE/Pong-v5"
PLAYFIELD_HEIGHT = PLAYFIELD_ROWS["Pong"][1] - PLAYFIELD_ROWS["Pong"][0]  # 160 rows
PLAYFIELD_WIDTH = 160
# RAM value minus these = centre row / column in the cropped playfield.
_BALL_ROW_OFFSET = 46  # top row ram-48, 4 rows tall
_BALL_COL_OFFSET = 48  # left column ram-49, 2 wide
_PADDLE_ROW_OFFSET = 40  # top row ram-47.5, 16 rows tall
_BALL_RED = 236  # the ball is (236, 236, 236); nothing else in the playfield has this much red
BUCKETS = 16  # rows and columns of the caption, 10 pixels each

# Episode seeds of the pre-training data start here (+ 10,000 per build seed), far from the
# probe's default held-out seeds (12345 + i): no probe frame comes from a training episode.
PRETRAIN_SEED_BASE = 1_000_000_000


def _require_pong(game_id: str) -> None:
    if game_name(game_id) != "Pong":
        raise ValueError(f"perception targets are read from Pong's RAM; {game_id!r} is not Pong (use ALE/Pong-v5)")


# --- the answer key -------------------------------------------------------------------------


@dataclass(frozen=True)
class PongScene:
    """What one observation (this frame and the previous one) shows, from the RAM."""

    ball_visible: bool
    ball_row: int | None  # centre row of the ball in the cropped playfield (0..159)
    ball_col: int | None
    paddle_row: int  # centre row of the player's paddle in the cropped playfield
    ball_above_paddle: bool | None
    vertical: str | None  # "up" / "down"; None when out of play, not moving vertically or unknown
    # "toward" the player's paddle (rightward) / "away"; not "left"/"right": in Pong those are
    # action names (they move the paddle down/up).
    horizontal: str | None
    # Physics read off two frames (what the oracle computes, no action): the row where the ball
    # will cross the paddle's column when it comes toward the player (walls folded in; None
    # otherwise), and the row where the paddle would come to rest if released now (momentum).
    crossing_row: int | None = None
    paddle_rest_row: int | None = None


def ball_drawn(frame: np.ndarray, game_id: str = GAME_ID) -> bool:
    """Whether the ball's colour appears in the playfield of a raw RGB frame."""
    top, bottom = PLAYFIELD_ROWS[game_name(game_id)]
    return bool((frame[top:bottom, :, 0] == _BALL_RED).any())


def scene_from_ram(
    ram: Sequence[int] | np.ndarray,
    prev_ram: Sequence[int] | np.ndarray | None = None,
    *,
    drawn: bool = True,
) -> PongScene:
    """The answer key of one observation; ``drawn`` is whether the frame shows the ball.

    The RAM says "in play" on a few frames where the ball isn't drawn (FACTS): the ball is
    visible only when both agree. Directions need the previous step's RAM with the ball in play.
    """
    state = parse_pong_ram(ram)
    prev = parse_pong_ram(prev_ram) if prev_ram is not None else None
    paddle_row = state.player_y - _PADDLE_ROW_OFFSET
    paddle_v = state.player_y - prev.player_y if prev is not None else 0
    rest_row = round(paddle_row + PongOracle.momentum * paddle_v)
    if not (state.ball_in_play and drawn):
        return PongScene(False, None, None, paddle_row, None, None, None, paddle_rest_row=rest_row)
    # Same threshold as the oracle's: ball_y - paddle_y == PADDLE_CENTRE_OFFSET is the paddle's middle.
    above = state.ball_y - state.player_y < PADDLE_CENTRE_OFFSET
    vertical = horizontal = crossing = None
    if prev is not None and prev.ball_in_play:
        dy, dx = state.ball_y - prev.ball_y, state.ball_x - prev.ball_x
        vertical = "up" if dy < 0 else "down" if dy > 0 else None
        horizontal = "away" if dx < 0 else "toward" if dx > 0 else None
        if dx > 0:
            crossing = round(predict_intercept_y(state.ball_x, state.ball_y, dx, dy)) - _BALL_ROW_OFFSET
    return PongScene(
        ball_visible=True,
        ball_row=state.ball_y - _BALL_ROW_OFFSET,
        ball_col=state.ball_x - _BALL_COL_OFFSET,
        paddle_row=paddle_row,
        ball_above_paddle=above,
        vertical=vertical,
        horizontal=horizontal,
        crossing_row=crossing,
        paddle_rest_row=rest_row,
    )


# --- the caption of the pre-training ----------------------------------------------------------

NO_BALL = "<noball>"
# Tokens added to the tokenizer for the caption; its other pieces are the probe's answer words.
CAPTION_TOKENS: list[str] = [
    NO_BALL,
    *[f"<y{i}>" for i in range(BUCKETS)],
    *[f"<x{i}>" for i in range(BUCKETS)],
    *[f"<p{i}>" for i in range(BUCKETS)],
    "<vnone>",
    "<hnone>",
]
CAPTION_PROMPT = "Describe the ball and your paddle."


def _bucket(value: int, size: int) -> int:
    return min(max(value * BUCKETS // size, 0), BUCKETS - 1)


def caption_tokens(scene: PongScene, physics: bool = False) -> list[str]:
    """Six one-token pieces: ball above/below the paddle, ball row, ball column, paddle row,
    vertical and horizontal direction. Above/below comes first: after the row tokens it would
    leak under teacher forcing (FACTS). Above/below and the directions are the probe's answer
    words (" above", " up", " toward"): the caption trains the very tokens the questions are
    answered with. No action names: this teaches seeing, not playing. With ``physics`` the two
    ``physics_tokens`` come first (eight pieces)."""
    if physics:
        return physics_tokens(scene) + caption_tokens(scene)
    paddle = f"<p{_bucket(scene.paddle_row, PLAYFIELD_HEIGHT)}>"
    if not scene.ball_visible:
        return [NO_BALL, NO_BALL, NO_BALL, paddle, NO_BALL, NO_BALL]
    return [
        option_text("above" if scene.ball_above_paddle else "below"),
        f"<y{_bucket(scene.ball_row, PLAYFIELD_HEIGHT)}>",
        f"<x{_bucket(scene.ball_col, PLAYFIELD_WIDTH)}>",
        paddle,
        option_text(scene.vertical) if scene.vertical else "<vnone>",
        option_text(scene.horizontal) if scene.horizontal else "<hnone>",
    ]


def physics_tokens(scene: PongScene) -> list[str]:
    """Two pieces put before the caption with ``physics``: the row bucket where the ball will cross
    the paddle's column (``<hnone>`` when it is not coming toward the player) and the row bucket
    where the paddle would come to rest. They reuse the row tokens (``<y..>``, ``<p..>``): the
    vocabulary, and so the default build, stay the same. First, so that nothing after them gives
    them away under teacher forcing."""
    crossing = "<hnone>" if scene.crossing_row is None else f"<y{_bucket(scene.crossing_row, PLAYFIELD_HEIGHT)}>"
    rest = scene.paddle_rest_row if scene.paddle_rest_row is not None else scene.paddle_row
    return [crossing, f"<p{_bucket(rest, PLAYFIELD_HEIGHT)}>"]


# --- the probe's questions --------------------------------------------------------------------


def _third(scene: PongScene) -> str | None:
    if not scene.ball_visible:
        return None
    return ("top", "middle", "bottom")[min(max(scene.ball_row * 3 // PLAYFIELD_HEIGHT, 0), 2)]


@dataclass(frozen=True)
class Question:
    """A question about the observation, its answer options and its answer key (None: not asked)."""

    name: str
    text: str
    options: tuple[str, ...]
    answer: Callable[[PongScene], str | None] = field(compare=False)


QUESTIONS: tuple[Question, ...] = (
    Question(
        "above_below",
        "Is the ball above or below your paddle (the green one)?",
        ("above", "below"),
        lambda s: None if s.ball_above_paddle is None else ("above" if s.ball_above_paddle else "below"),
    ),
    Question("vertical", "Is the ball moving up or down?", ("up", "down"), lambda s: s.vertical),
    Question("horizontal", "Is the ball moving toward you or away?", ("toward", "away"), lambda s: s.horizontal),
    Question("ball_third", "Is the ball in the top, middle or bottom third?", ("top", "middle", "bottom"), _third),
    Question("ball_visible", "Is the ball in play?", ("yes", "no"), lambda s: "yes" if s.ball_visible else "no"),
)
QUESTIONS_BY_NAME: dict[str, Question] = {q.name: q for q in QUESTIONS}


def observation_preamble(observation: ObservationConfig) -> str:
    """What the image(s) are, said before the question."""
    if observation.encoding == "motion":
        return "Red: now, green: before. "
    if observation.frames > 1:
        return f"The last {observation.frames} frames, oldest first. "
    return ""


def question_messages(text: str, observation: ObservationConfig) -> list[dict]:
    """A one-turn chat: the observation's image(s), then the question."""
    content = [{"type": "image"} for _ in range(observation.images_per_observation)]
    content.append({"type": "text", "text": observation_preamble(observation) + text})
    return [{"role": "user", "content": content}]


def option_text(option: str) -> str:
    """An option as it follows 'Assistant:' in the chat template (which renders 'Assistant: text')."""
    return " " + option


def perception_texts() -> list[str]:
    """The prompts and answers of the probe and the pre-training (for a tokenizer's corpus)."""
    texts = []
    for encoding, frames in (("motion", 2), ("rgb", 2), ("rgb", 1)):
        preamble = observation_preamble(ObservationConfig(frames=frames, encoding=encoding))
        texts += [preamble + CAPTION_PROMPT, *(preamble + q.text for q in QUESTIONS)]
    for q in QUESTIONS:
        texts += [option_text(o) for o in q.options]
    return texts


# --- frames of varied play --------------------------------------------------------------------


@dataclass
class PlayFrame:
    """One kept step of play: the last raw frames (oldest first) and this and the previous RAM."""

    frames: list[np.ndarray]
    ram: np.ndarray
    prev_ram: np.ndarray
    episode_seed: int

    def scene(self, game_id: str = GAME_ID) -> PongScene:
        return scene_from_ram(self.ram, self.prev_ram, drawn=ball_drawn(self.frames[-1], game_id))


def envs_for(frames: int, keep_prob: float) -> int:
    """Environments to play in parallel: 8, fewer for a handful of frames (each costs a ROM load)."""
    return int(min(8, max(1, frames * (1 / keep_prob) // 500)))


def varied_play(
    game_id: str = GAME_ID,
    *,
    seed: int,
    history: int = 2,
    num_envs: int = 8,
    keep_prob: float = 0.5,
    epsilons: Sequence[float] = (0.5, 1.0),
) -> Iterator[PlayFrame]:
    """Endless frames of varied play: each episode is the oracle with a random action at rate
    epsilon (drawn per episode from ``epsilons``; 1.0 is random play), each step kept with
    ``keep_prob``. Episode k is seeded ``seed + k``; everything is deterministic for a seed."""
    _require_pong(game_id)
    oracle = get_oracle(game_id)
    rng = np.random.default_rng(seed)
    batch = AtariBatch(game_id, num_envs)
    actions = batch.action_names
    next_episode = 0
    slots = []
    try:
        for slot in range(num_envs):
            frame, ram = batch.reset(slot, seed + next_episode)
            slots.append({"frames": [frame] * history, "ram": ram, "prev_ram": ram,
                          "epsilon": float(rng.choice(epsilons)), "seed": seed + next_episode})
            next_episode += 1
        while True:
            chosen = {}
            for slot, s in enumerate(slots):
                if rng.random() < s["epsilon"]:
                    chosen[slot] = actions[int(rng.integers(len(actions)))]
                else:
                    chosen[slot] = oracle.decide(s["ram"], s["prev_ram"]).action
            for slot, result in batch.step(chosen).items():
                s = slots[slot]
                if result.terminated or result.truncated:
                    frame, ram = batch.reset(slot, seed + next_episode)
                    s.update(frames=[frame] * history, ram=ram, prev_ram=ram,
                             epsilon=float(rng.choice(epsilons)), seed=seed + next_episode)
                    next_episode += 1
                    continue
                s.update(frames=[*s["frames"][1:], result.frame], prev_ram=s["ram"], ram=result.ram)
                if rng.random() < keep_prob:
                    yield PlayFrame(list(s["frames"]), s["ram"], s["prev_ram"], s["seed"])
    finally:
        batch.close()


# --- perception pre-training --------------------------------------------------------------------


@dataclass
class PerceptionData:
    """Encoded observations (uint8, [N, images, H, W, 3]) and their answer keys."""

    images: np.ndarray
    scenes: list[PongScene]

    def __len__(self) -> int:
        return len(self.scenes)


def collect_perception_data(
    n: int,
    observation: ObservationConfig,
    *,
    game_id: str = GAME_ID,
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
        game_id, seed=seed, history=frames_needed, keep_prob=keep_prob, num_envs=envs_for(n, keep_prob)
    )
    for i, item in enumerate(tqdm(islice(play, n), total=n, desc="perception frames", disable=not progress)):
        encoded = [np.asarray(im) for im in encode_observation(item.frames[-observation.frames:], observation, game_id)]
        if images is None:
            images = np.empty((n, len(encoded), *encoded[0].shape), dtype=np.uint8)
        images[i] = np.stack(encoded)
        scenes.append(item.scene(game_id))
    play.close()
    return PerceptionData(images if images is not None else np.empty((0,), np.uint8), scenes)


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

    def __post_init__(self) -> None:
        if self.frames < 1 or self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("pretrain frames, epochs and batch_size must be positive")
        if not 0.0 <= self.caption_fraction <= 1.0:
            raise ValueError(f"caption_fraction must be in [0, 1], got {self.caption_fraction}")
        unknown = set(self.question_weights) - {q.name for q in QUESTIONS}
        if unknown or any(w < 0 for w in self.question_weights.values()):
            raise ValueError(
                f"question_weights must be non-negative weights of {[q.name for q in QUESTIONS]}, "
                f"got {self.question_weights}"
            )

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.frames * self.epochs / self.batch_size))


@dataclass
class PretrainResult:
    steps: int
    samples: int
    seconds: float
    first_loss: float
    final_loss: float  # mean of the last 50 steps
    pixels: str  # how pixel values were made: the processor, or /255 after checking it matches the processor
    losses: list[float] = field(repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("losses")
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


def _task_prompts(processor, observation: ObservationConfig, sample: np.ndarray) -> dict[str, list[int]]:
    """Token ids of each task's prompt, images expanded by the processor itself."""
    from PIL import Image

    images = [Image.fromarray(im) for im in sample]
    prompts = {"caption": CAPTION_PROMPT, **{q.name: q.text for q in QUESTIONS}}
    ids = {}
    for task, text in prompts.items():
        chat = processor.apply_chat_template(question_messages(text, observation), add_generation_prompt=True)
        ids[task] = processor(text=[chat], images=[images], return_tensors="pt")["input_ids"][0].tolist()
    return ids


def _target_ids(tokenizer, scenes: list[PongScene], physics: bool = False) -> dict[str, list[list[int] | None]]:
    """Per task, each sample's answer token ids (None where the question has no answer)."""
    eos = tokenizer.eos_token_id
    piece_ids: dict[str, int] = {}

    def one_token(piece: str) -> int:
        if piece not in piece_ids:
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(
                    f"caption piece {piece!r} is {len(ids)} tokens in this tokenizer; build the tokenizer with "
                    "CAPTION_TOKENS and perception_texts() (vlmrl.tiny_model does)"
                )
            piece_ids[piece] = ids[0]
        return piece_ids[piece]

    caption = [[one_token(p) for p in caption_tokens(s, physics)] + [eos] for s in scenes]
    targets: dict[str, list[list[int] | None]] = {"caption": caption}
    for q in QUESTIONS:
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


def pretrain_perception(
    model,
    processor,
    data: PerceptionData,
    observation: ObservationConfig,
    config: PretrainConfig | None = None,
    *,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Teaches ``model`` to see: a dense caption (or one probe question) per frame, loss on
    every answer token, AdamW with warm-up and cosine decay. Targets come from the RAM only.

    ``callback(step, loss)`` runs after each optimizer step (e.g. to probe a learning curve;
    it must leave the model in train mode)."""
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    config = config or PretrainConfig()
    if len(data) == 0:
        raise ValueError("no perception data to pre-train on")
    tokenizer = processor.tokenizer
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    prompts = _task_prompts(processor, observation, data.images[0])
    targets = _target_ids(tokenizer, data.scenes, config.physics_caption)
    pixels = PixelPath(processor, data.images[:8])
    tasks = list(prompts)  # "caption" first, then the questions
    weights = np.array([config.question_weights.get(t, 1.0) for t in tasks[1:]])
    task_p = [config.caption_fraction, *((1.0 - config.caption_fraction) * weights / weights.sum())]
    pad = tokenizer.pad_token_id

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    model.train()
    order = np.empty(0, dtype=np.int64)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="perception pre-training", disable=not progress)
    for step in bar:
        while len(order) < config.batch_size:  # epochs run into each other: a permutation at a time
            order = np.concatenate([order, rng.permutation(len(data))])
        idx, order = order[: config.batch_size], order[config.batch_size :]
        seqs, prompt_lens = [], []
        for i, task in zip(idx, rng.choice(len(tasks), size=len(idx), p=task_p), strict=True):
            target = targets[tasks[task]][i]
            prompt = prompts[tasks[task]]
            if target is None:  # the question has no answer here (no ball): caption instead
                target, prompt = targets["caption"][i], prompts["caption"]
            seqs.append(prompt + target)
            prompt_lens.append(len(prompt))
        loss = _answer_loss(model, seqs, prompt_lens, pixels(data.images[idx]), pad)
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
        losses=losses,
    )
