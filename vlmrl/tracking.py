"""Live scalars of collection and evaluation, CleanRL style: each episode's return against the agent
steps played so far, as it happens, through the backend training reports to (``report_to``).

``tensorboard`` (the default) writes event files; ``trackio`` and ``wandb`` log to their own
dashboards where installed; ``none`` logs nothing. One ``Tracker`` per phase run; with several
processes each writes its own run (``process_<rank>``), since each plays its own episodes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BACKENDS = ("tensorboard", "trackio", "wandb", "none")


def check_report_to(report_to: str) -> str:
    """The backend named, or a ValueError saying which exist and which is not installed."""
    if report_to not in BACKENDS:
        raise ValueError(f"--report-to must be one of {', '.join(BACKENDS)}, got {report_to!r}")
    if report_to in ("trackio", "wandb"):
        import importlib.util

        if importlib.util.find_spec(report_to) is None:
            raise ValueError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to} "
                             "(or use --report-to tensorboard)")
    return report_to


def logging_dir(given: str | None, default: Path) -> Path:
    """Where TensorBoard events go: the flag, else ``TENSORBOARD_LOGGING_DIR`` (what the Trainer reads,
    and what the experiment loop sets per phase), else ``default``."""
    return Path(given or os.environ.get("TENSORBOARD_LOGGING_DIR") or default)


class Tracker:
    """Scalars, images and videos of one phase run, logged as they happen against agent steps."""

    def __init__(self, report_to: str, log_dir: Path, *, run_name: str, config: dict | None = None,
                 process_index: int = 0, num_processes: int = 1) -> None:
        self.backend = check_report_to(report_to)
        self.returns: list[float] = []
        self._writer = self._run = None
        if num_processes > 1:
            log_dir, run_name = log_dir / f"process_{process_index}", f"{run_name}-process{process_index}"
        if self.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir))
            if config:
                # CleanRL's hyper-parameter table: the run's settings beside its curves.
                rows = "\n".join(f"|{k}|{v}|" for k, v in config.items())
                self._writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
        elif self.backend == "trackio":
            import trackio

            self._run = trackio.init(project="vlmrl", name=run_name, config=config)
        elif self.backend == "wandb":
            import wandb

            self._run = wandb.init(project="vlmrl", name=run_name, config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Scalars at ``step`` agent steps."""
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
        elif self._run is not None:
            self._run.log({**scalars, "agent_steps": step})

    def episode(self, prefix: str, episode_return: float, length: int, step: int) -> None:
        """A finished episode: its return and length, and the running mean return, at ``step`` agent steps."""
        self.returns.append(episode_return)
        self.log({f"{prefix}/episodic_return": episode_return, f"{prefix}/episodic_length": length,
                  f"{prefix}/mean_return": float(np.mean(self.returns))}, step)

    def video(self, tag: str, frames: list[np.ndarray], step: int, fps: int = 15) -> None:
        """An episode's (rendered) frames: a TensorBoard video where moviepy is installed, else a contact
        sheet of evenly spaced frames as one image; trackio and wandb get their own video object."""
        if not frames:
            return
        if self._writer is not None:
            import importlib.util

            if importlib.util.find_spec("moviepy") is not None:
                video = np.stack(frames).transpose(0, 3, 1, 2)[None]  # (1, T, C, H, W)
                self._writer.add_video(tag, video, step, fps=fps)
            else:
                self._writer.add_image(tag, contact_sheet(frames), step, dataformats="HWC")
        elif self.backend == "wandb":
            import wandb

            self._run.log({tag: wandb.Video(np.stack(frames).transpose(0, 3, 1, 2), fps=fps), "agent_steps": step})
        elif self.backend == "trackio":
            import trackio

            if hasattr(trackio, "Video"):  # older trackio releases log scalars only
                self._run.log({tag: trackio.Video(np.stack(frames).transpose(0, 3, 1, 2), fps=fps),
                               "agent_steps": step})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif self._run is not None:
            self._run.finish()


def contact_sheet(frames: list[np.ndarray], count: int = 8, columns: int = 4) -> np.ndarray:
    """``count`` evenly spaced frames of an episode tiled in rows of ``columns`` (one HWC image)."""
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, min(count, len(frames))).astype(int)]
    h, w = picks[0].shape[:2]
    rows = -(-len(picks) // columns)
    sheet = np.zeros((rows * h, min(columns, len(picks)) * w, 3), np.uint8)
    for i, frame in enumerate(picks):
        r, c = divmod(i, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frame[..., :3]
    return sheet
