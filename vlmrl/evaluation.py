"""Evaluation: play held-out seeds, measure return, oracle agreement and invalid outputs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlmrl.configs import EvaluateArguments
from vlmrl.data import ensure_writable, meta_path, write_json
from vlmrl.env import AtariBatch
from vlmrl.games import Game, get_game
from vlmrl.games.base import decide_batch
from vlmrl.policies import build_policy
from vlmrl.results import agreement_by_phase, build_results, eval_seeds, write_results
from vlmrl.rollout import EpisodeRecord, play_episodes

RESULTS = "results.json"
TRAIN_MANIFEST = "vlmrl_train.json"  # marks a checkpoint written by train.py


def oracle_agreement(game: Game, episodes: list[EpisodeRecord]) -> float | None:
    """Share of steps whose action is in the oracle's class (e.g. up/down/stay); None without an oracle."""
    return oracle_agreement_stats(game, episodes)[0]


def oracle_agreement_stats(game: Game, episodes: list[EpisodeRecord]) -> tuple[float | None, dict | None]:
    """The oracle agreement, and the same split by the game's phases (Pong: where the ball is in the
    rally) as ``{phase: {agreement, steps}}``; each None where the game has no oracle or no phases.

    In Pong, agreement while the ball comes toward the player is the part that wins or loses points;
    while it goes away, "drift back to the middle" is easy.
    """
    if not game.has_oracle:
        return None, None
    oracle = game.oracle()
    per_step = []
    for episode in episodes:
        decisions = decide_batch(oracle, [s.ram for s in episode.steps], [s.prev_ram for s in episode.steps])
        per_step += [game.same_class(s.decision.action, d.action)
                     for s, d in zip(episode.steps, decisions, strict=True)]
    if not per_step:
        return None, None
    overall = sum(per_step) / len(per_step)
    if not game.phases:
        return overall, None
    phases = [game.phase(s.ram, s.prev_ram) for e in episodes for s in e.steps]
    return overall, agreement_by_phase(per_step, phases, game.phases)


def save_gif(frames: list[np.ndarray], path: Path, max_frames: int, fps: int = 15) -> Path:
    """An animated GIF of an episode, every k-th frame so it stays under ``max_frames``."""
    stride = max(1, -(-len(frames) // max_frames))
    images = [Image.fromarray(f) for f in frames[::stride]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0, optimize=True)
    return path


def evaluate(args: EvaluateArguments) -> dict:
    """Plays ``args.episodes`` held-out episodes and writes ``results.json`` (and a GIF) to the output dir."""
    from vlmrl.results import check_results_owner, evaluation_settings, record_results_owner

    output_dir = ensure_writable(args.output_dir)
    settings = evaluation_settings(args)
    check_results_owner(output_dir, settings)  # another run's results are never overwritten
    game = get_game(args.game)
    seeds = eval_seeds(args.episodes)
    batch = AtariBatch(game.id, args.num_envs, frameskip=args.frameskip,
                       repeat_action_probability=args.repeat_action_probability)
    try:
        policy = build_policy(args, game, batch.action_names, seed=args.seed)
        start = time.perf_counter()
        episodes = list(
            play_episodes(policy, batch, list(enumerate(seeds)), max_steps=args.max_steps,
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
    agreement, agreement_split = oracle_agreement_stats(game, episodes)
    results = build_results(
        model=policy.model_name,
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
    if args.max_steps is not None:
        results["max_steps"] = args.max_steps  # a capped evaluation says so: it is not the protocol's score
    write_results(output_dir / RESULTS, results)
    record_results_owner(output_dir, settings)
    card = Path(args.model or "") / "README.md"
    if args.max_steps is not None:
        print(f"note: episodes capped at {args.max_steps} steps: not the full protocol, so the model card is left "
              "as it is")
    elif args.policy == "model" and card.exists() and meta_path(card.parent, TRAIN_MANIFEST).exists():
        from vlmrl.cards import add_eval_results_to_card

        add_eval_results_to_card(card, results)
    if args.probe == "vision":
        from vlmrl.probe import run_vision_probe

        if args.policy != "model":
            raise ValueError("--probe vision needs a model (--policy model --model ...)")
        probe = run_vision_probe(args.model, game=game, frames=args.probe_frames, observation=policy.observation)
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
