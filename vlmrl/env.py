"""ALE games as a batch of environments, each slot playing one seeded episode at a time.

The batch is a list of gymnasium environments rather than a gymnasium vector env because
every episode of a collection has its own seed (``seed + episode_index``): that is what
makes a collection reproducible and resumable episode by episode, and vector envs reset
with their own seed sequence. Stepping is cheap next to the model (FACTS: ~4,000 steps/s
for one env, a few hundred frames/s for the tiny model), so a Python loop costs little.

A *seeded* reset is not cheap: ale_py reloads the ROM (~0.15 s, holding the GIL). Making resets
ahead in a helper process was tried and removed: it did not pay on a loaded 2-core machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

_registered = False


def _register_ale() -> None:
    global _registered
    if not _registered:
        import ale_py

        gym.register_envs(ale_py)
        _registered = True


def game_name(game_id: str) -> str:
    """'ALE/Pong-v5' -> 'Pong'; 'PongNoFrameskip-v4' -> 'Pong'."""
    name = game_id.split("/")[-1].split("-")[0]
    for suffix in ("NoFrameskip", "Deterministic"):
        name = name.removesuffix(suffix)
    return name


def make_env(
    game_id: str,
    *,
    frameskip: int = 4,
    repeat_action_probability: float = 0.25,
    render_mode: str | None = None,
) -> gym.Env:
    """One ALE environment under the v5 protocol by default, with a clear error for a bad id."""
    _register_ale()
    try:
        return gym.make(
            game_id,
            frameskip=frameskip,
            repeat_action_probability=repeat_action_probability,
            render_mode=render_mode,
        )
    except (gym.error.Error, ValueError) as err:
        ale_ids = sorted(i for i in gym.registry if i.startswith("ALE/") and i.endswith("-v5"))
        examples = ", ".join(ale_ids[:6])
        raise ValueError(
            f"unknown game id {game_id!r} ({err}). Use an ALE id such as ALE/Pong-v5; "
            f"{len(ale_ids)} v5 games are installed, e.g. {examples}"
        ) from None


def ram_of(env: gym.Env) -> np.ndarray:
    """The emulator's 128-byte RAM."""
    return env.unwrapped.ale.getRAM().copy()


@dataclass
class StepResult:
    """What one slot saw after one agent step."""

    frame: np.ndarray
    ram: np.ndarray
    reward: float
    terminated: bool
    truncated: bool


class AtariBatch:
    """N environments of one game stepped together; each slot is reset with its own seed."""

    def __init__(
        self,
        game_id: str,
        num_envs: int,
        *,
        frameskip: int = 4,
        repeat_action_probability: float = 0.25,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.game_id = game_id
        env_kwargs = {"frameskip": frameskip, "repeat_action_probability": repeat_action_probability}
        self.envs = [make_env(game_id, **env_kwargs) for _ in range(num_envs)]
        self.action_names: list[str] = list(self.envs[0].unwrapped.get_action_meanings())
        self._index = {name: i for i, name in enumerate(self.action_names)}

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def reset(self, slot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Start a new episode in ``slot``; returns its first frame and RAM."""
        env = self.envs[slot]
        frame, _ = env.reset(seed=seed)
        return frame, ram_of(env)

    def step(self, actions: dict[int, str]) -> dict[int, StepResult]:
        """Step the given slots with action names; returns each slot's result."""
        results = {}
        for slot, action in actions.items():
            env = self.envs[slot]
            frame, reward, terminated, truncated, _ = env.step(self._index[action])
            results[slot] = StepResult(frame, ram_of(env), float(reward), bool(terminated), bool(truncated))
        return results

    def close(self) -> None:
        for env in self.envs:
            env.close()
