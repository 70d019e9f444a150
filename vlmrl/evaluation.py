"""Evaluation: play held-out seeds, measure return, oracle agreement and invalid outputs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlmrl.collection import build_policy
from vlmrl.configs import EvaluateArguments
from vlmrl.data import ensure_writable, meta_path, write_json
from vlmrl.env import AtariBatch, game_name
from vlmrl.results import build_results, eval_seeds, write_results
from vlmrl.rollout import EpisodeRecord, play_episodes

RESULTS = "results.json"
TRAIN_MANIFEST = "vlmrl_train.json"  # marks a checkpoint written by train.py


def oracle_agreement(game_id: str, episodes: list[EpisodeRecord]) -> float | None:
    """Share of steps whose action is in the oracle's class (up/down/stay); None without an oracle."""
    return oracle_agreement_stats(game_id, episodes)[0]


def oracle_agreement_stats(game_id: str, episodes: list[EpisodeRecord]) -> tuple[float | None, dict | None]:
    """The oracle agreement, and (Pong) the same split by where the ball is in the rally:
    ``{phase: {agreement, steps}}`` for ``vlmrl.oracle.BALL_PHASES``; each None where it does not apply.

    Agreement while the ball comes toward the player is the part that wins or loses points; while
    it goes away, "drift back to the middle" is easy.
    """
    from vlmrl.oracle import agreement_by_phase, ball_phase

    per_step = _agreement_per_step(game_id, episodes)
    if not per_step:
        return None, None
    overall = sum(per_step) / len(per_step)
    if game_name(game_id).lower() != "pong":
        return overall, None
    phases = [ball_phase(s.ram, s.prev_ram) for e in episodes for s in e.steps]
    return overall, agreement_by_phase(per_step, phases)


def _agreement_per_step(game_id: str, episodes: list[EpisodeRecord]) -> list[bool] | None:
    """Whether each step's action is in the oracle's class, in order; None without an oracle."""
    from vlmrl.oracle import get_oracle, has_oracle, same_class

    if not has_oracle(game_id):
        return None
    oracle = get_oracle(game_id)
    out = []
    for episode in episodes:
        decisions = oracle.decide_batch([s.ram for s in episode.steps], [s.prev_ram for s in episode.steps])
        out += [same_class(game_id, s.decision.action, d.action) for s, d in zip(episode.steps, decisions,
                                                                                   strict=True)]
    return out


def save_gif(frames: list[np.ndarray], path: Path, max_frames: int, fps: int = 15) -> Path:
    """An animated GIF of an episode, every k-th frame so it stays under ``max_frames``."""
    stride = max(1, -(-len(frames) // max_frames))
    images = [Image.fromarray(f) for f in frames[::stride]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0, optimize=True)
    return path


def evaluate(args: EvaluateArguments) -> dict:
    """Plays ``args.episodes`` held-out episodes and writes ``results.json`` (and a GIF) to the output dir."""
    output_dir = ensure_writable(args.output_dir)
    seeds = eval_seeds(args.episodes)
    batch = AtariBatch(args.game, args.num_envs, frameskip=args.frameskip,
                       repeat_action_probability=args.repeat_action_probability)
    try:
        policy, model_name = build_policy(args, args.game, batch.action_names, seed=args.seed)
        start = time.perf_counter()
        episodes = list(
            play_episodes(policy, batch, list(enumerate(seeds)), frames=args.frames, max_steps=args.max_steps,
                          keep_frames={0} if args.video else False, progress=args.progress, desc="evaluate")
        )
        wall = time.perf_counter() - start
    finally:
        batch.close()
    episodes.sort(key=lambda e: e.episode_id)
    steps = sum(len(e.steps) for e in episodes)
    video = None
    if args.video:
        video = str(save_gif([s.frame for s in episodes[0].steps], output_dir / "episode.gif", args.video_max_frames))
    agreement, agreement_split = oracle_agreement_stats(args.game, episodes)
    results = build_results(
        model=model_name,
        game=args.game,
        policy=args.policy,
        seeds=seeds,
        returns=[e.episode_return for e in episodes],
        oracle_agreement=agreement,
        oracle_agreement_by_phase=agreement_split,
        invalid_rate=sum(e.invalid_steps for e in episodes) / steps,
        env_steps=steps,
        steps_per_s=steps / wall,
        video=video,
    )
    write_results(output_dir / RESULTS, results)
    card = Path(args.model or "") / "README.md"
    if args.policy == "model" and card.exists() and meta_path(card.parent, TRAIN_MANIFEST).exists():
        from vlmrl.hub import add_eval_results_to_card

        add_eval_results_to_card(card, results)
    if args.probe == "vision":
        from vlmrl.probe import run_vision_probe

        if args.policy != "model":
            raise ValueError("--probe vision needs a model (--policy model --model ...)")
        probe = run_vision_probe(args.model, game_id=args.game, frames=args.probe_frames,
                                 observation=args.observation_config(policy.encoder.observation.image_size))
        write_json(output_dir / "probe.json", probe)
        results = {**results, "probe": probe}
    return results


def format_results(results: dict) -> str:
    low, high = results["ci95"]
    agreement = results["oracle_agreement"]
    hn = results["human_normalized"]
    split = results.get("oracle_agreement_by_phase") or {}
    toward = (split.get("toward") or {}).get("agreement")
    return (
        f"{results['policy']} {results['model']}: mean return {results['mean_return']:+.2f} "
        f"(95% CI {low:+.2f}..{high:+.2f}, std {results['std_return']:.2f}, {results['episodes']} episodes)"
        f" | human-normalised {'-' if hn is None else f'{hn:.3f}'}"
        f" | oracle agreement {'-' if agreement is None else f'{agreement:.3f}'}"
        f"{'' if toward is None else f' ({toward:.3f} with the ball coming toward you)'}"
        f" | invalid {results['invalid_rate']:.1%} | {results['env_steps']} steps at {results['steps_per_s']:.0f}/s"
    )
