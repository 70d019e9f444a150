"""What the model sees: raw ALE frames turned into the image(s) of the acting prompt.

Two encodings:
- ``rgb``: each of the last ``frames`` frames as its own image (SmolVLM's way: it has
  pretrained vision and reads colours).
- ``motion``: the current and previous frame in ONE image, R = current luminance,
  G = previous, B = current, background subtracted, so a 16-token image shows where
  the ball is and which way it moves (FACTS: the tiny model learns to see this quickly).

``encode_observation`` makes one observation's PIL images; ``encode_batch`` makes the same pixels
for a whole batch at once as one array (what acting uses every step).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from vlmrl.games import Game

_MOTION_GAIN = 1.7  # maps the ball's contrast (~149) to ~254


# What train.py writes beside a checkpoint: the observation it was fine-tuned on. The tiny model's
# build records its own in TINY_CONFIG_FILE. Every phase reads the record of the model it runs.
OBSERVATION_FILE = "vlmrl_observation.json"
TINY_CONFIG_FILE = "tiny_config.json"


@dataclass(frozen=True)
class ObservationConfig:
    """How frames become images: count, encoding, crop and size."""

    frames: int = 1
    encoding: str = "rgb"
    crop: bool = False
    image_size: int = 384
    resample: str = "nearest"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if self.encoding not in ("rgb", "motion"):
            raise ValueError(f"encoding must be 'rgb' or 'motion', got {self.encoding!r}")
        if self.encoding == "motion" and self.frames != 2:
            raise ValueError("the motion encoding packs exactly 2 frames into one image: set frames: 2")
        if self.resample not in ("nearest", "bilinear"):
            raise ValueError(f"resample must be 'nearest' or 'bilinear', got {self.resample!r}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")

    @property
    def images_per_observation(self) -> int:
        return 1 if self.encoding == "motion" else self.frames


def recorded_observation(model: str | Path | None) -> dict | None:
    """The observation a local model was built or fine-tuned for (its record's fields), or None."""
    if not model:
        return None
    path = Path(model)
    tiny = path / TINY_CONFIG_FILE
    if tiny.is_file() and (observation := json.loads(tiny.read_text()).get("observation")):
        return dict(observation)
    tuned = path / OBSERVATION_FILE
    if tuned.is_file():
        return dict(json.loads(tuned.read_text()))
    return None


def resolve_observation(given: dict, model: str | Path | None, default_image_size: int = 384) -> ObservationConfig:
    """The observation a phase uses: each field given (a flag or recipe key, not None) wins, then the
    model's record (``recorded_observation``), then the defaults (one RGB frame at the vision size)."""
    known = ObservationConfig.__dataclass_fields__
    fields = {k: v for k, v in (recorded_observation(model) or {}).items() if k in known}
    fields.setdefault("image_size", default_image_size)
    fields.update({k: v for k, v in given.items() if v is not None})
    return ObservationConfig(**fields)


def write_observation_record(directory: str | Path, observation: ObservationConfig) -> Path:
    """Records beside a checkpoint the observation it was trained on."""
    path = Path(directory) / OBSERVATION_FILE
    path.write_text(json.dumps(asdict(observation), indent=2) + "\n")
    return path


def _crop(frame: np.ndarray, game: Game, crop: bool) -> np.ndarray:
    if not crop:
        return frame
    top, bottom = game.crop_rows()
    return frame[top:bottom]


def _resize(image: Image.Image, config: ObservationConfig) -> Image.Image:
    # Nearest keeps Pong's 2x4-pixel ball; bilinear smears it to near invisibility (FACTS).
    resample = Image.NEAREST if config.resample == "nearest" else Image.BILINEAR
    return image.resize((config.image_size, config.image_size), resample)


def luminance(frame: np.ndarray) -> np.ndarray:
    return frame[..., 0] * 0.299 + frame[..., 1] * 0.587 + frame[..., 2] * 0.114


def motion_image(current: np.ndarray, previous: np.ndarray, game: Game) -> np.ndarray:
    """Two RGB frames -> one uint8 image: R,B = current, G = previous, background ~1, never all 0."""
    background = game.background_luminance
    channels = []
    for frame in (current, previous, current):
        contrast = np.abs(luminance(frame.astype(np.float32)) - background) * _MOTION_GAIN
        channels.append(np.clip(contrast, 0, 254) + 1)
    return np.stack(channels, axis=-1).astype(np.uint8)


def encode_observation(frames: list[np.ndarray], config: ObservationConfig, game: Game) -> list[Image.Image]:
    """The last ``config.frames`` raw frames (oldest first) -> the prompt's images."""
    if len(frames) != config.frames:
        raise ValueError(f"expected {config.frames} frames, got {len(frames)}")
    cropped = [_crop(f, game, config.crop) for f in frames]
    if config.encoding == "motion":
        arrays = [motion_image(cropped[-1], cropped[-2], game)]
    else:
        arrays = cropped
    return [_resize(Image.fromarray(a), config) for a in arrays]


@lru_cache(maxsize=16)
def _nearest_pick(height: int, width: int, size: int, top: int) -> np.ndarray:
    """Flat byte indices (size, size, 3) into an RGB frame (height, width, 3) of the pixels that PIL's
    nearest resize of its rows ``top:height`` reads: PIL's own choice (an image of pixel numbers, resized)."""
    numbers = np.arange(top * width, height * width, dtype=np.int32).reshape(height - top, width)
    picked = np.asarray(Image.fromarray(numbers).resize((size, size), Image.NEAREST)).astype(np.intp)
    return picked[..., None] * 3 + np.arange(3)


def encode_batch(
    observations: list[list[np.ndarray]],
    config: ObservationConfig,
    game: Game,
    cache: dict | None = None,
    *,
    channels_first: bool = False,
) -> np.ndarray:
    """``encode_observation`` for a batch at once: one uint8 array (batch, images, size, size, 3), or
    (batch, images, 3, size, size) with ``channels_first`` (the model's layout, built as such).

    The same pixels as stacking ``encode_observation``'s images (tested), at a fraction of the cost:
    with nearest resizing each output pixel is one source pixel, so the pixels are picked first (at
    PIL's own indices) and the motion encoding, pixel by pixel, runs on the small pictures only.
    ``cache`` (a dict the caller keeps between calls) holds each frame's part by the frame's
    identity, so a frame seen again (this step's frame is the next step's previous one) is not
    worked on twice; it is left holding this call's frames only. Bilinear resizing goes through
    ``encode_observation``.
    """
    shape = observations[0][0].shape if observations else None
    for frames in observations:
        if len(frames) != config.frames:
            raise ValueError(f"expected {config.frames} frames, got {len(frames)}")
        if any(f.shape != shape for f in frames):
            raise ValueError(f"frames of one batch must share a shape; got {[f.shape for f in frames]} and {shape}")
    size, count = config.image_size, config.images_per_observation
    if config.resample != "nearest" or not observations:
        out = np.zeros((len(observations), count, size, size, 3), np.uint8)
        for i, frames in enumerate(observations):
            for j, image in enumerate(encode_observation(frames, config, game)):
                out[i, j] = np.asarray(image)
        return np.ascontiguousarray(out.transpose(0, 1, 4, 2, 3)) if channels_first else out
    height, width = shape[:2]
    top, bottom = game.crop_rows() if config.crop else (0, height)
    pick = _nearest_pick(bottom, width, size, top)
    previous = {} if cache is None else cache
    layout = (config, game.id, channels_first)  # what a cached part was made for
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(frame) -> (frame, its part): the frame keeps its id
    missing = []
    for frames in observations:
        for f in frames:
            if id(f) not in parts:
                known = previous.get(id(f)) if previous.get("layout") == layout else None
                if known is not None and known[0] is f:
                    parts[id(f)] = known
                else:
                    parts[id(f)] = (f, None)
                    missing.append(f)
    if missing:
        small = np.stack([np.take(np.ascontiguousarray(f).ravel(), pick) for f in missing])  # (m, size, size, 3)
        if config.encoding == "motion":
            background = game.background_luminance
            contrast = np.abs(luminance(small.astype(np.float32)) - background) * _MOTION_GAIN
            small = (np.clip(contrast, 0, 254) + 1).astype(np.uint8)  # (m, size, size)
        elif channels_first:
            small = small.transpose(0, 3, 1, 2)  # (m, 3, size, size)
        for f, part in zip(missing, small, strict=True):
            parts[id(f)] = (f, np.ascontiguousarray(part))
    if cache is not None:
        cache.clear()
        cache.update(parts, layout=layout)
    if config.encoding != "motion":
        return np.stack([[parts[id(f)][1] for f in frames] for frames in observations])
    current = np.stack([parts[id(frames[1])][1] for frames in observations])
    before = np.stack([parts[id(frames[0])][1] for frames in observations])
    # R, B: now; G: before
    return np.stack([current, before, current], axis=1 if channels_first else -1)[:, None]


class FrameHistory:
    """The last K frames of one episode; the first frame is repeated until K have been seen."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.frames: list[np.ndarray] = []

    def reset(self, frame: np.ndarray) -> None:
        self.frames = [frame] * self.k

    def push(self, frame: np.ndarray) -> None:
        self.frames = [*self.frames[1:], frame]
