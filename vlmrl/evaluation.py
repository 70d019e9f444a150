"""Evaluation: play held-out seeds, measure return, oracle agreement and invalid outputs."""

from __future__ import annotations

import time
from dataclasses import asdict
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
    return agreement_from_steps(game, [episode_oracle(game, e) for e in episodes])


def episode_oracle(game: Game, episode: EpisodeRecord) -> dict:
    """One episode's per-step oracle actions, agreement and phases (empty lists where the game has no oracle
    or no phases): small enough to gather from every process."""
    if not game.has_oracle:
        return {"oracle_actions": None, "agrees": [], "phases": []}
    decisions = decide_batch(game.oracle(), [s.ram for s in episode.steps], [s.prev_ram for s in episode.steps])
    agrees = [game.same_class(s.decision.action, d.action) for s, d in zip(episode.steps, decisions, strict=True)]
    phases = [game.phase(s.ram, s.prev_ram) for s in episode.steps] if game.phases else []
    return {"oracle_actions": [d.action for d in decisions], "agrees": agrees, "phases": phases}


def agreement_from_steps(game: Game, per_episode: list[dict]) -> tuple[float | None, dict | None]:
    """``oracle_agreement_stats`` from ``episode_oracle``'s records."""
    agrees = [a for e in per_episode for a in e["agrees"]]
    if not game.has_oracle or not agrees:
        return None, None
    overall = sum(agrees) / len(agrees)
    if not game.phases:
        return overall, None
    return overall, agreement_by_phase(agrees, [p for e in per_episode for p in e["phases"]], game.phases)


def write_episode_video(episode: EpisodeRecord, oracle: dict, path: Path, max_frames: int,
                        game: Game | None = None) -> list[np.ndarray]:
    """The episode's GIF: scaled up, with the step, the score, the action and the oracle's action drawn.
    Returns the rendered frames."""
    from vlmrl.video import render_episode, save_gif

    frames = [_decoded(s.frame) for s in episode.steps]
    rendered = render_episode(frames, [s.decision.action for s in episode.steps], [s.reward for s in episode.steps],
                              oracle["oracle_actions"], oracle["agrees"] or None, max_frames=max_frames,
                              label=f"episode {episode.episode_id}   ", name=_action_namer(game))
    save_gif(rendered, path)
    return rendered


def _action_namer(game: Game | None):
    """Action names with what they do where the game says (Pong's RIGHT moves the paddle up)."""
    if game is None or not game.action_classes:
        return str
    return lambda action: f"{action} ({game.action_class(action)})" if action.upper() in game.action_classes \
        else action


def _decoded(frame) -> np.ndarray:
    """A kept frame: PNG-encoded in the background while playing (many episodes' frames fit in memory)."""
    if isinstance(frame, np.ndarray):
        return frame
    import io

    return np.asarray(Image.open(io.BytesIO(frame.png())).convert("RGB"))


def evaluate(args: EvaluateArguments) -> dict:
    """Plays ``args.episodes`` held-out episodes and writes ``results.json`` (and GIFs) to the output dir.

    Under ``accelerate launch`` (CPU or GPU) each process plays its share of the episodes; the main
    process gathers returns and agreement and writes the one results.json. Returns the results on
    every process. Another run's results are never overwritten.
    """
    from vlmrl.collection import ShardWriter
    from vlmrl.distributed import gather, my_share, process_state
    from vlmrl.results import check_results_owner, evaluation_settings, record_results_owner
    from vlmrl.tracking import Tracker, logging_dir
    from vlmrl.video import video_episode_ids

    state = process_state()
    output_dir = Path(args.output_dir)
    settings = evaluation_settings(args)
    if state.is_main_process:
        ensure_writable(output_dir)
        check_results_owner(output_dir, settings)  # another run's results are never overwritten
    state.wait_for_everyone()
    game = get_game(args.game)
    seeds = eval_seeds(args.episodes, args.first_episode)
    filmed = video_episode_ids(args.video_episodes, args.episodes) if args.video else set()
    jobs = my_share(list(enumerate(seeds)), state)
    tracker = Tracker(args.report_to, logging_dir(args.logging_dir, output_dir / "tensorboard"),
                      run_name=f"evaluate-{output_dir.name}", config=asdict(args),
                      process_index=state.process_index, num_processes=state.num_processes)
    batch = AtariBatch(game.id, args.num_envs, frameskip=args.frameskip,
                       repeat_action_probability=args.repeat_action_probability)
    encoder = ShardWriter()  # its background thread PNG-encodes the filmed episodes' frames
    try:
        policy = build_policy(args, game, batch.action_names, seed=args.seed + state.process_index)
        start = time.perf_counter()
        episodes = list(
            play_episodes(policy, batch, jobs, max_steps=args.max_steps, keep_frames=filmed,
                          on_frames=encoder.encode_frames if filmed else None,
                          progress=args.progress and state.is_local_main_process, desc="evaluate",
                          on_episode=lambda e, steps: tracker.episode("eval", e.episode_return, len(e.steps), steps))
        )
        wall = time.perf_counter() - start
        encoder.close()
        oracle = {e.episode_id: episode_oracle(game, e) for e in episodes}
        videos = {}
        for e in sorted(episodes, key=lambda e: e.episode_id):
            if e.episode_id in filmed:
                path = output_dir / f"episode_{e.episode_id:03d}.gif"
                rendered = write_episode_video(e, oracle[e.episode_id], path, args.video_max_frames, game)
                tracker.video("eval/video", rendered, step=e.episode_id)  # one card, a slider over episodes
                videos[e.episode_id] = str(path)
    except BaseException:
        tracker.close()
        raise
    finally:
        encoder.close(raise_errors=False)
        batch.close()
    mine = [(e.episode_id, e.episode_return, len(e.steps), e.invalid_steps, oracle[e.episode_id]) for e in episodes]
    gathered = gather({"episodes": mine, "videos": videos, "wall": wall}, state)
    played = sorted((row for part in gathered for row in part["episodes"]), key=lambda row: row[0])
    videos = {k: v for part in gathered for k, v in part["videos"].items()}
    steps = sum(row[2] for row in played)
    agreement, agreement_split = agreement_from_steps(game, [row[4] for row in played])
    results = build_results(
        model=policy.model_name,
        game=args.game,
        policy=args.policy,
        seeds=seeds,
        returns=[row[1] for row in played],
        oracle_agreement=agreement,
        oracle_agreement_by_phase=agreement_split,
        invalid_rate=sum(row[3] for row in played) / steps,
        env_steps=steps,
        steps_per_s=steps / max(part["wall"] for part in gathered),
        video=videos[min(videos)] if videos else None,
        videos=[videos[k] for k in sorted(videos)] if videos else None,
    )
    if args.max_steps is not None:
        results["max_steps"] = args.max_steps  # a capped evaluation says so: it is not the protocol's score
    if args.policy == "model" and args.action_biases():
        results["action_bias"] = args.action_biases()  # a shifted decision threshold is not the model's own play
    if state.is_main_process:
        write_results(output_dir / RESULTS, results)
        record_results_owner(output_dir, settings)
        tracker.log({f"eval/{key}": results[key] for key in ("mean_return", "oracle_agreement", "invalid_rate",
                                                            "steps_per_s") if results[key] is not None}, steps)
    tracker.close()
    card = Path(args.model or "") / "README.md"
    if args.max_steps is not None:
        if state.is_main_process:
            print(f"note: episodes capped at {args.max_steps} steps: not the full protocol, so the model card is "
                  "left as it is")
    elif args.first_episode:
        if state.is_main_process:
            print("note: other games than the protocol's (--first-episode): the model card is left as it is")
    elif state.is_main_process and args.policy == "model" and writes_card(card.parent):
        from vlmrl.cards import add_eval_results_to_card

        add_eval_results_to_card(card, results)
    if args.probe == "vision" and state.is_main_process:
        from vlmrl.probe import run_vision_probe

        if args.policy != "model":
            raise ValueError("--probe vision needs a model (--policy model --model ...)")
        probe = run_vision_probe(args.model, game=game, frames=args.probe_frames, observation=policy.observation)
        write_json(output_dir / "probe.json", probe)
        results = {**results, "probe": probe}
    return results


def writes_card(model_dir: Path) -> bool:
    """Whether an evaluation writes its results into the model's card: a checkpoint train.py wrote, or a mean of
    checkpoints (``vlmrl.averaging``), never a card someone else wrote (a Hub download, a base model)."""
    from vlmrl.averaging import RECORD

    return (model_dir / "README.md").exists() and (meta_path(model_dir, TRAIN_MANIFEST).exists()
                                                    or (model_dir / RECORD).exists())


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
