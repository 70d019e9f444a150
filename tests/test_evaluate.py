import json

import numpy as np
import pytest

from vlmrl.configs import EvaluateArguments
from vlmrl.evaluation import evaluate, format_results, oracle_agreement, oracle_agreement_stats
from vlmrl.games import get_game
from vlmrl.games.pong import make_pong_ram
from vlmrl.policies import Decision
from vlmrl.results import RESULTS_KEYS, eval_seeds
from vlmrl.rollout import EpisodeRecord, StepRecord
from vlmrl.video import BAND_HEIGHT, render_episode, video_episode_ids

MOTION = dict(frames=2, encoding="motion", crop=True, image_size=128)

PONG = get_game("ALE/Pong-v5")


def _ram(ball_x, ball_y, paddle_y):
    return make_pong_ram(ball_x, ball_y, paddle_y)


def test_oracle_agreement_on_a_known_case():
    oracle = PONG.oracle()
    rams = [_ram(150, 80, 150), _ram(150, 200, 60), _ram(150, 120, 113)]
    prevs = [_ram(140, 80, 150), _ram(140, 200, 60), _ram(140, 120, 113)]
    truth = [oracle.decide(r, p).action for r, p in zip(rams, prevs, strict=True)]
    assert truth[0] == "RIGHT" and truth[1] == "LEFT"  # ball far above / far below the paddle
    # Agree on the first two by class (RIGHTFIRE is up like RIGHT), disagree on the third.
    wrong = "LEFT" if truth[2] != "LEFT" else "RIGHT"
    actions = ["RIGHTFIRE", "LEFTFIRE", wrong]
    steps = [StepRecord(None, r, p, Decision(a), 0.0, False, False)
             for r, p, a in zip(rams, prevs, actions, strict=True)]
    assert oracle_agreement(PONG, [EpisodeRecord(0, 0, steps)]) == pytest.approx(2 / 3)
    assert oracle_agreement(get_game("ALE/Pooyan-v5"), [EpisodeRecord(0, 0, steps)]) is None


def test_agreement_by_phase_splits_the_steps_where_the_ball_is():
    # Toward (x 140 -> 150): the oracle goes up for a ball far above; away (x 150 -> 140): it
    # returns to the middle (down from a paddle at the top); out of play: it waits in the middle.
    rams = [_ram(150, 60, 150), _ram(150, 60, 150), _ram(140, 100, 40), _ram(0, 0, 118)]
    prevs = [_ram(140, 60, 150), _ram(140, 60, 150), _ram(150, 100, 40), _ram(0, 0, 118)]
    actions = ["RIGHT", "LEFT", "LEFT", "NOOP"]  # agree, disagree, agree, agree
    steps = [StepRecord(None, r, p, Decision(a), 0.0, False, False)
             for r, p, a in zip(rams, prevs, actions, strict=True)]
    episodes = [EpisodeRecord(0, 0, steps[:2]), EpisodeRecord(1, 1, steps[2:])]
    overall, split = oracle_agreement_stats(PONG, episodes)
    assert split == {"toward": {"agreement": 0.5, "steps": 2}, "away": {"agreement": 1.0, "steps": 1},
                     "none": {"agreement": 1.0, "steps": 1}}
    assert oracle_agreement(PONG, episodes) == pytest.approx(3 / 4) == overall
    assert oracle_agreement_stats(get_game("ALE/Pooyan-v5"), episodes) == (None, None)
    only_toward = oracle_agreement_stats(PONG, episodes[:1])[1]
    assert only_toward["away"] == {"agreement": None, "steps": 0}


def test_random_policy_results_follow_the_schema(tmp_path):
    results = evaluate(EvaluateArguments(policy="random", episodes=3, max_steps=40, num_envs=3,
                                         output_dir=str(tmp_path), progress=False, video_episodes="all"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(RESULTS_KEYS) <= set(saved) and saved == results
    assert saved["seeds"] == eval_seeds(3) and min(saved["seeds"]) >= 1_000_000  # never a collection seed
    assert saved["episodes"] == 3 and len(saved["returns"]) == 3 and saved["env_steps"] == 120
    assert saved["mean_return"] == pytest.approx(np.mean(saved["returns"]))
    low, high = saved["ci95"]
    assert low <= saved["mean_return"] <= high
    assert min(saved["returns"]) <= low + 1e-9 or low >= min(saved["returns"])
    assert saved["human_normalized"] == pytest.approx((saved["mean_return"] + 20.7) / (14.6 + 20.7))
    assert 0.0 <= saved["oracle_agreement"] <= 1.0 and saved["invalid_rate"] == 0.0
    split = saved["oracle_agreement_by_phase"]
    assert set(split) == {"toward", "away", "none"} and sum(p["steps"] for p in split.values()) == 120
    agreed = sum(p["agreement"] * p["steps"] for p in split.values() if p["steps"])
    assert agreed / 120 == pytest.approx(saved["oracle_agreement"])
    assert "oracle agreement" in format_results(saved)
    # Every episode filmed, scaled up twice with a text band under it; results.json's video is the first.
    assert saved["videos"] == [str(tmp_path / f"episode_{i:03d}.gif") for i in range(3)]
    assert saved["video"] == saved["videos"][0]
    from PIL import Image

    with Image.open(saved["video"]) as gif:
        assert gif.size == (320, 420 + BAND_HEIGHT) and gif.n_frames == 40
    # The scalars were logged as they happened, against agent steps (TensorBoard by default).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("eval/episodic_return")] == [120, 120, 120]  # 3 envs finish together
    assert events.Scalars("eval/mean_return")[-1].value == pytest.approx(saved["mean_return"])
    assert "eval/video" in events.Tags()["images"]


def test_other_held_out_games_are_played_from_first_episode_on(tmp_path):
    args = dict(policy="random", episodes=2, max_steps=30, num_envs=2, progress=False, video=False)
    protocol = evaluate(EvaluateArguments(output_dir=str(tmp_path / "a"), **args))
    other = evaluate(EvaluateArguments(output_dir=str(tmp_path / "b"), first_episode=1, **args))
    assert protocol["seeds"] == [1_000_000, 1_000_001] and other["seeds"] == [1_000_001, 1_000_002]
    # The same game, seed 1,000,001, plays the same whichever run it is in (the random policy is seeded per episode).
    assert other["returns"][0] == protocol["returns"][1]
    # Another set of games is another evaluation: never written over the protocol's results.
    with pytest.raises(ValueError, match="first_episode"):
        evaluate(EvaluateArguments(output_dir=str(tmp_path / "a"), first_episode=1, **args))
    for bad in (-1, 100_001):
        with pytest.raises(ValueError, match="--first-episode"):
            EvaluateArguments(policy="random", first_episode=bad)
    with pytest.raises(ValueError, match="not published"):
        EvaluateArguments(policy="random", first_episode=10, push_to_hub="u/m")


def test_video_episodes_choice_and_overlay():
    frames = [np.zeros((210, 160, 3), np.uint8)] * 5
    rendered = render_episode(frames, ["NOOP", "RIGHT", "LEFT", "NOOP", "NOOP"], [0, 1, 0, -1, 0],
                              ["NOOP", "LEFT", "LEFT", "NOOP", "NOOP"], [True, False, True, True, True], max_frames=3)
    assert len(rendered) == 3 and rendered[0].shape == (420 + BAND_HEIGHT, 320, 3)
    band = rendered[1][420:]  # step 2, after one disagreement: text was drawn in the band
    assert (band != band[0, 0]).any()
    assert video_episode_ids("all", 3) == {0, 1, 2} and video_episode_ids("0,2", 3) == {0, 2}
    assert video_episode_ids("none", 3) == set()
    with pytest.raises(ValueError, match="outside"):
        video_episode_ids("5", 3)


def test_tiny_model_evaluation_and_card(tmp_path, tiny_model):
    results = evaluate(EvaluateArguments(model=tiny_model, episodes=2, max_steps=20, num_envs=2,
                                         output_dir=str(tmp_path), progress=False, video=False, **MOTION))
    assert results["model"] == tiny_model and results["policy"] == "model" and results["video"] is None
    assert results["env_steps"] == 40 and results["steps_per_s"] > 0


def test_evaluation_flags_are_checked():
    with pytest.raises(ValueError, match="--episodes must be >= 1"):
        EvaluateArguments(policy="random", episodes=0)
    with pytest.raises(ValueError, match="--probe"):
        EvaluateArguments(policy="random", probe="audio")
