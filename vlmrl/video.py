"""Evaluation videos a person can read: each frame scaled up, with the step, the action played, the
oracle's action (green when they agree, red when not) and the score drawn under it; one GIF per episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

AGREE, DISAGREE, TEXT, BAND = (80, 200, 120), (235, 90, 80), (235, 235, 235), (24, 24, 28)
BAND_HEIGHT = 46


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # FreeType's scalable default (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def video_episode_ids(choice: str, episodes: int) -> set[int]:
    """``all``, ``none`` or comma-separated episode indices (0-based) -> the set of episodes filmed."""
    text = str(choice).strip().lower()
    if text == "all":
        return set(range(episodes))
    if text in ("none", ""):
        return set()
    try:
        ids = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ValueError(f"--video-episodes must be all, none or episode numbers like 0,3; got {choice!r}") from None
    bad = sorted(i for i in ids if not 0 <= i < episodes)
    if bad:
        raise ValueError(f"--video-episodes {bad} outside the {episodes} episodes (0..{episodes - 1})")
    return ids


def annotate(frame: np.ndarray, *, step: int, action: str, oracle_action: str | None, agree: bool | None,
             score: tuple[int, int], scale: int = 2, label: str = "") -> np.ndarray:
    """One raw frame scaled ``scale`` times (nearest: the ball stays sharp) above a band that says the
    step, the score (points won : lost), the action played and the oracle's action."""
    h, w = frame.shape[:2]
    image = Image.new("RGB", (w * scale, h * scale + BAND_HEIGHT), BAND)
    image.paste(Image.fromarray(frame[..., :3]).resize((w * scale, h * scale), Image.NEAREST), (0, 0))
    draw = ImageDraw.Draw(image)
    font = _font(14)
    top = h * scale + 4
    won, lost = score
    draw.text((6, top), f"{label}step {step}   score {won} : {lost}", fill=TEXT, font=font)
    colour = TEXT if agree is None else (AGREE if agree else DISAGREE)
    said = f"action {action}" + ("" if oracle_action is None else f"   oracle {oracle_action}")
    draw.text((6, top + 20), said, fill=colour, font=font)
    return np.asarray(image)


def render_episode(frames: Sequence[np.ndarray], actions: Sequence[str], rewards: Sequence[float],
                   oracle_actions: Sequence[str] | None = None, agrees: Sequence[bool] | None = None, *,
                   max_frames: int = 600, scale: int = 2, label: str = "",
                   name: Callable[[str], str] = str) -> list[np.ndarray]:
    """Every k-th step of an episode, annotated, so that at most ``max_frames`` remain; the score counts
    every step's reward, shown or not. ``name`` writes an action (e.g. Pong's ``RIGHT (up)``)."""
    n = len(frames)
    stride = max(1, -(-n // max_frames))
    won = np.cumsum([r > 0 for r in rewards])
    lost = np.cumsum([r < 0 for r in rewards])
    out = []
    for i in range(0, n, stride):
        before = (int(won[i - 1]), int(lost[i - 1])) if i else (0, 0)  # the frame is what the agent saw
        out.append(annotate(
            frames[i], step=i, action=name(actions[i]), label=label, scale=scale, score=before,
            oracle_action=None if oracle_actions is None else name(oracle_actions[i]),
            agree=None if agrees is None else bool(agrees[i]),
        ))
    return out


def save_gif(frames: Sequence[np.ndarray], path: str | Path, fps: int = 15) -> Path:
    """An animated GIF of the given frames, looping."""
    path = Path(path)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=False)
    return path
