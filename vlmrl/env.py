"""ALE games as a batch of environments, each slot playing one seeded episode at a time.

The batch is a list of gymnasium environments rather than a gymnasium vector env because
every episode of a collection has its own seed (``seed + episode_index``): that is what
makes a collection reproducible and resumable episode by episode, and vector envs reset
with their own seed sequence. Stepping is cheap next to the model (FACTS: ~4,000 steps/s
for one env, a few hundred frames/s for the tiny model), so a Python loop costs little.

A *seeded* reset is not cheap: ale_py reloads the ROM (~0.15 s, holding the GIL, so a thread
cannot hide it). With ``prefetch_resets`` a helper process does the seeded resets of the planned
episodes ahead of time (``plan``) and sends back each one's emulator state, RNG included; the
batch restores it (~0.3 ms) instead of reloading. The episode is the same, step for step (tested).
"""

from __future__ import annotations

import os
import threading
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


def _reset_worker_main() -> None:
    """The helper process (``python -c``): reads seeds, one a line, from stdin; for each, a seeded
    reset, and its (seed, state with RNG, frame, RAM) pickled to stdout, in order."""
    import json
    import pickle
    import sys

    out = os.fdopen(os.dup(1), "wb")  # the protocol's channel ...
    os.dup2(2, 1)  # ... and anything printed (ALE's banner) goes to stderr instead
    game_id, env_kwargs = json.loads(sys.argv[1])
    env = make_env(game_id, **env_kwargs)
    for line in sys.stdin:
        seed = int(line)
        frame, _ = env.reset(seed=seed)
        pickle.dump((seed, env.unwrapped.ale.cloneState(include_rng=True), frame, ram_of(env)), out)
        out.flush()


class _ResetPrefetcher:
    """Seeded resets made ahead in a ``python -c`` child process (not multiprocessing: spawning
    would re-run the caller's main module), whose answers a reader thread collects.

    Seeds are sent as they are planned, two in flight at a time (the reader thread sends the next
    when one is answered), and at most ``window`` answers wait to be taken. ``take(seed)`` returns
    the answer when it is there, waits when that seed is being reset right now, and otherwise
    returns None and has the helper skip the seed: the caller resets it itself.
    """

    def __init__(self, game_id: str, env_kwargs: dict, window: int) -> None:
        import json
        import subprocess
        import sys
        from pathlib import Path

        package_root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from vlmrl.env import _reset_worker_main; _reset_worker_main()",
             json.dumps([game_id, env_kwargs])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.window = window
        self.planned: list[int] = []  # not yet sent
        self.in_flight: list[int] = []  # sent, not yet answered, in order
        self.ready: dict[int, tuple] = {}  # answered, not yet taken
        self.dropped: set[int] = set()  # in flight, but reset by the caller meanwhile
        self.started = False  # it has answered once (before that, nothing waits for it)
        self.broken = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True, name="vlmrl-resets").start()

    def _read(self) -> None:
        import pickle

        while True:
            try:
                answer = pickle.load(self.process.stdout)
            except Exception:  # noqa: BLE001 - EOF or a broken pipe: the helper is gone
                answer = None
            with self._changed:
                if answer is None or not self.in_flight or answer[0] != self.in_flight[0]:
                    self.broken = True
                    self._changed.notify_all()
                    return
                self.started = True
                seed = self.in_flight.pop(0)
                if seed in self.dropped:
                    self.dropped.discard(seed)
                else:
                    self.ready[seed] = answer
                self._send()
                self._changed.notify_all()

    def _send(self) -> None:  # with the lock held
        while (not self.broken and self.planned and len(self.in_flight) < 2
               and len(self.in_flight) + len(self.ready) < self.window):
            seed = self.planned.pop(0)
            try:
                self.process.stdin.write(f"{seed}\n".encode())
                self.process.stdin.flush()
            except OSError:
                self.broken = True
                return
            self.in_flight.append(seed)

    def plan(self, seeds: list[int]) -> None:
        with self._changed:
            self.planned.extend(seeds)
            self._send()

    def take(self, seed: int) -> tuple | None:
        with self._changed:
            if seed not in self.ready and self.started and self.in_flight and self.in_flight[0] == seed:
                # Being reset now: waiting costs less than starting over.
                self._changed.wait_for(lambda: seed in self.ready or self.broken, timeout=60)
            if seed in self.ready:
                answer = self.ready.pop(seed)
                self._send()
                return answer
            if seed in self.in_flight:
                self.dropped.add(seed)
            elif seed in self.planned:
                self.planned.remove(seed)
            return None

    def close(self) -> None:
        self.process.kill()  # it holds nothing worth keeping: answers not taken are dropped
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class AtariBatch:
    """N environments of one game stepped together; each slot is reset with its own seed.

    ``prefetch_resets``: seeded resets of the seeds given to ``plan`` are made ahead of time in a
    helper process (see the module docstring). ``reset`` restores the helper's state when it is
    there (or being made); otherwise it resets here as usual and the helper skips that seed, so
    the helper never makes a reset wait longer than doing it here would.
    """

    def __init__(
        self,
        game_id: str,
        num_envs: int,
        *,
        frameskip: int = 4,
        repeat_action_probability: float = 0.25,
        prefetch_resets: bool = False,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.game_id = game_id
        env_kwargs = {"frameskip": frameskip, "repeat_action_probability": repeat_action_probability}
        self.envs = [make_env(game_id, **env_kwargs) for _ in range(num_envs)]
        self.action_names: list[str] = list(self.envs[0].unwrapped.get_action_meanings())
        self._index = {name: i for i, name in enumerate(self.action_names)}
        self._was_reset = [False] * num_envs
        self.prefetched_resets = 0  # resets restored from the helper's states
        # At most two batches' worth of answers (~15 kB of state and a frame each) wait.
        self._prefetcher = _ResetPrefetcher(game_id, env_kwargs, 2 * num_envs) if prefetch_resets else None

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def plan(self, seeds: list[int]) -> None:
        """The seeds of the coming ``reset`` calls, in order (without ``prefetch_resets``: ignored)."""
        if self._prefetcher is not None:
            self._prefetcher.plan(list(seeds))

    def reset(self, slot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Start a new episode in ``slot``; returns its first frame and RAM."""
        env = self.envs[slot]
        answer = self._prefetcher.take(seed) if self._prefetcher is not None else None
        if answer is not None:
            _, state, frame, ram = answer
            if not self._was_reset[slot]:
                env.reset()  # once, unseeded (no ROM reload): the wrappers want a reset before a step
                self._was_reset[slot] = True
            env.unwrapped.seed_game(seed)  # the env's own RNG, as a seeded reset sets it
            env.unwrapped.ale.restoreState(state)
            self.prefetched_resets += 1
            return frame, ram
        frame, _ = env.reset(seed=seed)
        self._was_reset[slot] = True
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
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        for env in self.envs:
            env.close()
