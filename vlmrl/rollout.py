"""Play across a batch of environments: every way vlmrl plays a game.

- ``play_episodes``: seeded episodes with a policy, shared by collection (which stores every
  step) and evaluation (which keeps returns, agreement and one episode's frames for the video).
  Acting is batched: every active env's observation goes to the policy in one call per step.
- ``varied_play``: endless frames of the oracle with random actions mixed in, the data of the
  perception pre-training and the vision probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from vlmrl.env import AtariBatch
from vlmrl.observation import FrameHistory
from vlmrl.policies.base import Decision, Observation

if TYPE_CHECKING:
    from vlmrl.games import Game


@dataclass
class StepRecord:
    """One agent step: what the agent saw (frame, RAM), what it did and what followed.

    ``frame`` is the raw frame, None when not kept, or what ``play_episodes``' ``on_frames`` made of it.
    """

    frame: np.ndarray | Any | None
    ram: np.ndarray
    prev_ram: np.ndarray | None
    decision: Decision
    reward: float
    terminated: bool
    truncated: bool
    teacher: bool = False  # the teacher's action was played instead of the policy's


@dataclass
class EpisodeRecord:
    episode_id: int
    seed: int
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def episode_return(self) -> float:
        return float(sum(s.reward for s in self.steps))

    @property
    def invalid_steps(self) -> int:
        return sum(not s.decision.valid for s in self.steps)


@dataclass
class _Slot:
    episode: EpisodeRecord
    history: FrameHistory
    ram: np.ndarray
    prev_ram: np.ndarray | None = None
    teacher_rng: np.random.Generator | None = None
    policy_rng: np.random.Generator | None = None


def episode_rngs(episode_seed: int, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """An episode's own random streams, the teacher-mix draws' and the policy's sampling, from the episode's
    seed and the run's ``seed``: the same episode draws the same whatever else runs beside it, before it
    or in another process, so a resumed or re-batched collection equals an uninterrupted one."""
    teacher, policy = np.random.SeedSequence([int(episode_seed), int(seed)]).spawn(2)
    return np.random.default_rng(teacher), np.random.default_rng(policy)


def play_episodes(
    policy,
    batch: AtariBatch,
    jobs: list[tuple[int, int]],
    *,
    max_steps: int | None = None,
    keep_frames: bool | set[int] = True,
    progress: bool = True,
    desc: str = "episodes",
    teacher=None,
    teacher_mix: float = 0.0,
    seed: int = 0,
    on_frames: Callable[[list[np.ndarray]], list] | None = None,
    on_episode: Callable[[EpisodeRecord, int], None] | None = None,
) -> Iterator[EpisodeRecord]:
    """Plays each ``(episode_id, seed)`` job; yields episodes as they finish (not in job order).

    Each observation holds the policy's ``history`` last frames (the teacher sees the same).
    ``max_steps`` caps an episode in agent steps (its last step is marked truncated);
    ``keep_frames`` is True, False, or the set of episode ids whose frames are kept.
    With a ``teacher`` policy, each step plays the teacher's action with probability ``teacher_mix``
    (DAgger's mixture): the states visited stay near the teacher's, where corrections teach most.
    Those draws, and a sampling policy's, come from each episode's own streams (``episode_rngs`` of the
    episode's seed and ``seed``), never from one stream shared by the episodes in play.
    ``on_frames`` is called once per agent step with that step's kept frames and returns one object
    per frame, stored as the steps' ``frame`` (collection starts their PNG encoding there, so it runs
    in the background while the next steps play). ``on_episode(episode, agent_steps)`` is called as each
    episode finishes, with the agent steps played so far (live logging, CleanRL's x-axis).

    The progress bar counts agent steps (episodes × ``max_steps`` where that caps them; an episode that
    ends early takes its unplayed steps off the total) and shows the running mean return.
    """
    frames = policy.history
    queue = list(jobs)
    slots: dict[int, _Slot] = {}
    bar = tqdm(total=len(jobs) * max_steps if max_steps else None, desc=desc, unit="step", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    returns: list[float] = []
    steps_done, start = 0, time.perf_counter()

    def keep(episode_id: int) -> bool:
        return keep_frames if isinstance(keep_frames, bool) else episode_id in keep_frames

    def fill() -> None:
        for slot in range(batch.num_envs):
            if slot not in slots and queue:
                episode_id, episode_seed = queue.pop(0)
                frame, ram = batch.reset(slot, episode_seed)
                history = FrameHistory(frames)
                history.reset(frame)
                teacher_rng, policy_rng = episode_rngs(episode_seed, seed)
                slots[slot] = _Slot(EpisodeRecord(episode_id, episode_seed), history, ram,
                                    teacher_rng=teacher_rng, policy_rng=policy_rng)

    try:
        fill()
        while slots:
            order = sorted(slots)
            observations = [
                Observation(list(slots[s].history.frames), slots[s].ram, slots[s].prev_ram, slots[s].policy_rng)
                for s in order
            ]
            decisions = policy.act(observations)
            by_teacher = [False] * len(order)
            if teacher is not None and teacher_mix > 0:
                by_teacher = [bool(slots[s].teacher_rng.random() < teacher_mix) for s in order]
                taught = teacher.act(observations)
                decisions = [
                    Decision(t.action, d.reasoning, d.raw_output, d.valid) if use else d
                    for d, t, use in zip(decisions, taught, by_teacher, strict=True)
                ]
            results = batch.step({s: d.action for s, d in zip(order, decisions, strict=True)})
            steps_done += len(order)
            bar.update(len(order))
            kept = [s for s in order if keep(slots[s].episode.episode_id)]
            seen = {s: slots[s].history.frames[-1] for s in kept}
            if on_frames is not None and kept:
                seen = dict(zip(kept, on_frames([seen[s] for s in kept]), strict=True))
            for s, decision, taught_step in zip(order, decisions, by_teacher, strict=True):
                slot, result = slots[s], results[s]
                episode = slot.episode
                capped = max_steps is not None and len(episode.steps) + 1 >= max_steps
                episode.steps.append(
                    StepRecord(
                        frame=seen.get(s),
                        ram=slot.ram,
                        prev_ram=slot.prev_ram,
                        decision=decision,
                        reward=result.reward,
                        terminated=result.terminated,
                        truncated=result.truncated or (capped and not result.terminated),
                        teacher=taught_step,
                    )
                )
                if result.terminated or result.truncated or capped:
                    del slots[s]
                    returns.append(episode.episode_return)
                    if max_steps and bar.total:
                        bar.total -= max_steps - len(episode.steps)  # ended early: those steps never come
                    bar.set_postfix(
                        episodes=f"{len(returns)}/{len(jobs)}",
                        mean_return=f"{np.mean(returns):+.1f}",
                        steps_per_s=f"{steps_done / (time.perf_counter() - start):.0f}",
                    )
                    if on_episode is not None:
                        on_episode(episode, steps_done)
                    yield episode
                else:
                    slot.history.push(result.frame)
                    slot.prev_ram, slot.ram = slot.ram, result.ram
            fill()
    finally:
        bar.close()


# --- frames of varied play ---------------------------------------------------------------------


@dataclass
class PlayFrame:
    """One kept step of play: the last raw frames (oldest first) and this and the previous RAM."""

    frames: list[np.ndarray]
    ram: np.ndarray
    prev_ram: np.ndarray
    episode_seed: int

    def scene(self, game: Game):
        """The game's answer key of this step (what the observation shows, from the RAM)."""
        return game.scene(self.ram, self.prev_ram, self.frames[-1])


def envs_for(frames: int, keep_prob: float) -> int:
    """Environments to play in parallel: 8, fewer for a handful of frames (each costs a ROM load)."""
    return int(min(8, max(1, frames * (1 / keep_prob) // 500)))


def varied_play(
    game: Game,
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
    oracle = game.oracle()
    rng = np.random.default_rng(seed)
    batch = AtariBatch(game.id, num_envs)
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
