"""Learning without an oracle: hindsight outcomes, the grounded reflector, self-imitation, rehearsal."""

import json

import numpy as np
import pytest
from datasets import Dataset, load_dataset

import vlmrl.grounding as grounding
from vlmrl.configs import ReflectArguments
from vlmrl.data import EPISODE_FEATURES, write_shard
from vlmrl.games import Game, get_game
from vlmrl.games.base import GroundedAnswers
from vlmrl.games.pong import GroundedRules, grounded_correction, make_pong_ram
from vlmrl.observation import ObservationConfig
from vlmrl.prompts import reflection_messages
from vlmrl.reflection import reflect, select_good_steps
from vlmrl.reflectors import GroundedReflector, ReflectionItem, build_reflector
from vlmrl.rehearsal import mix_rehearsal, rehearsal_count, rehearsal_rows

PONG = get_game("ALE/Pong-v5")
MOTION = ObservationConfig(frames=2, encoding="motion", crop=True, image_size=128)


def _rally(xs, rewards=None):
    """RAMs of a rally with the ball at these x (0: out of play), and the rewards (default none)."""
    rams = np.stack([make_pong_ram(ball_x=x, ball_y=100 if x else 0, player_y=120) for x in xs])
    return rams, np.asarray(rewards if rewards is not None else [0.0] * len(xs))


# --- the outcome frame -----------------------------------------------------------------------


def test_the_outcome_is_the_ball_reaching_the_players_column():
    rams, rewards = _rally([100, 120, 140, 160, 180, 186, 182, 170])
    assert PONG.outcome_step(rams, rewards, 0, outcome="ball_at_paddle") == 5
    assert PONG.outcome_step(rams, rewards, 0) == 2  # Pong's default: ahead, its teacher's 2 steps
    assert PONG.outcome_step(rams, rewards, 2, outcome="ball_at_paddle") == 5
    assert PONG.outcome_step(rams, rewards, 0, outcome="next") == 1
    assert PONG.outcome_step(rams, rewards, 0, max_lookahead=3) == 3  # capped: the frame 3 steps on


def test_a_point_decided_first_is_the_outcome():
    # The ball never reaches the column in these RAMs; the reward of step 2 shows on step 3's frame.
    rams, rewards = _rally([100, 120, 140, 0, 0, 0], [0, 0, -1, 0, 0, 0])
    assert PONG.outcome_step(rams, rewards, 0, outcome="ball_at_paddle") == 3
    assert PONG.outcome_step(rams, rewards, 0, outcome="point") == 3
    # "point" waits for the reward even when the ball reaches the column before it.
    rams, rewards = _rally([170, 186, 192, 200, 0], [0, 0, 0, -1, 0])
    assert PONG.outcome_step(rams, rewards, 0, outcome="point") == 4
    assert PONG.outcome_step(rams, rewards, 0, outcome="ball_at_paddle") == 1


def test_the_episode_ending_first_is_the_outcome():
    rams, rewards = _rally([100, 110, 120, 130])
    assert PONG.outcome_step(rams, rewards, 1) == 3
    assert PONG.outcome_step(rams, rewards, 3) == 3  # the last step is its own outcome
    assert PONG.outcome_step(rams, rewards, 3, outcome="next") == 3


def test_ahead_is_a_fixed_number_of_steps_later_or_the_episodes_end():
    # The two-step teacher's own hindsight: where the ball is two steps on, whatever happens between.
    rams, rewards = _rally([100, 120, 140, 160, 180, 186], [0, 0, -1, 0, 0, 0])
    assert PONG.outcome_step(rams, rewards, 0, outcome="ahead", max_lookahead=2) == 2
    assert PONG.outcome_step(rams, rewards, 1, outcome="ahead", max_lookahead=3) == 4
    assert PONG.outcome_step(rams, rewards, 4, outcome="ahead", max_lookahead=2) == 5  # the episode ends first
    assert "ahead" in Game("ALE/Breakout-v5").outcomes


def test_a_game_without_a_module_has_the_generic_outcomes():
    breakout = Game("ALE/Breakout-v5")
    rams = np.zeros((5, 128), np.uint8)
    assert breakout.outcome_step(rams, [0, 1, 0, 0, 0], 0) == 2  # a reward: the generic "point"
    assert breakout.outcome_step(rams, [0, 0, 0, 0, 0], 0, outcome="next") == 1
    with pytest.raises(ValueError, match="ball_at_paddle"):
        breakout.outcome_step(rams, [0] * 5, 0, outcome="ball_at_paddle")


def test_the_reflection_prompt_shows_and_names_the_outcome(pong_actions):
    common = dict(action_taken="LEFT", reasoning="r", reward=-1.0, return_to_go=-0.5, num_images_now=1,
                  num_images_next=1)
    plain = reflection_messages(PONG, pong_actions, **common)
    # Without an outcome the prompt is word for word the one the tiny model's tokenizer was trained on.
    assert plain[1]["content"][1]["text"].endswith("The next frame follows. What should you have done, and why?")
    assert [c["type"] for c in plain[1]["content"]] == ["image", "text", "image"]
    hindsight = reflection_messages(PONG, pong_actions, **common, num_images_outcome=1,
                                    outcome_description=PONG.outcome_description("ball_at_paddle"), outcome_steps=12)
    text = hindsight[1]["content"][1]["text"]
    assert "ball reached your paddle's column" in text and "12 steps later" in text
    assert [c["type"] for c in hindsight[1]["content"]] == ["image", "text", "image", "image"]


# --- the grounded reflector: the model's answers, the game's rules -----------------------------


def _answers(paddle="<p8>", before="<p8>", seen=" below", arrival="<y3>", arrival_paddle="<p8>",
             directions=("toward", "toward", "away"), taken="NOOP"):
    now = {"above_below": seen, "ball_row": "<y9>", "paddle_row": paddle, "horizontal": " toward"}
    outcome = [{"above_below": " above", "ball_row": arrival, "paddle_row": arrival_paddle}]
    return GroundedAnswers(now, {"paddle_row": before}, outcome, list(directions), taken)


def test_the_ball_arriving_above_the_paddle_means_up():
    cls, analysis = grounded_correction(_answers(arrival="<y3>"), GroundedRules())
    assert cls == "up" and PONG.class_actions[cls] == "RIGHT"
    # The analysis quotes what the model said.
    assert "<y3>" in analysis and "<p8>" in analysis and "2 of 3" in analysis
    assert grounded_correction(_answers(arrival="<y14>"), GroundedRules())[0] == "down"
    assert grounded_correction(_answers(arrival="<y8>"), GroundedRules())[0] == "stay"


def test_momentum_and_margin_come_from_the_rules():
    # Paddle at row bucket 8 coming from 10 (moving up ~20 rows): it comes to rest near bucket 6.
    answers = _answers(paddle="<p8>", before="<p10>", arrival="<y8>")
    assert grounded_correction(answers, GroundedRules())[0] == "down"
    assert grounded_correction(answers, GroundedRules(momentum=0.0))[0] == "stay"
    assert grounded_correction(_answers(arrival="<y5>"), GroundedRules(margin=40))[0] == "stay"


def test_a_ball_going_away_means_head_for_the_middle():
    away = ("away", "away", "toward")
    assert grounded_correction(_answers(paddle="<p2>", before="<p2>", directions=away), GroundedRules())[0] == "down"
    assert grounded_correction(_answers(paddle="<p13>", before="<p13>", directions=away), GroundedRules())[0] == "up"
    assert grounded_correction(_answers(paddle="<p7>", before="<p7>", directions=away), GroundedRules())[0] == "stay"
    # No ball seen in the step's frame: the middle too, whatever the direction looks said.
    assert grounded_correction(_answers(paddle="<p2>", before="<p2>", seen="<noball>"), GroundedRules())[0] == "down"


def test_the_ball_meeting_the_paddle_keeps_the_action_taken():
    met = _answers(arrival="<y3>", arrival_paddle="<p3>", taken="LEFTFIRE")
    assert grounded_correction(met, GroundedRules(keep_when_met=True))[0] == "down"
    assert grounded_correction(met, GroundedRules())[0] == "up"


def test_expected_rows_read_between_buckets():
    # Paddle at bucket 8 (centre row 85); the ball arrives at bucket 7 (75): within the margin of 11.
    answers = _answers(arrival="<y7>")
    assert grounded_correction(answers, GroundedRules(expected_rows=False))[0] == "stay"
    # The reader hesitated: mean buckets 8.4 for the paddle, 6.9 for the arrival: 15 rows apart, move up.
    answers.now["paddle_row_expected"] = answers.before["paddle_row_expected"] = 8.4
    answers.outcome[0]["ball_row_expected"] = 6.9
    assert grounded_correction(answers, GroundedRules(expected_rows=True))[0] == "up"
    assert grounded_correction(answers, GroundedRules(expected_rows=False))[0] == "stay"
    # A piece that is no bucket (no ball) is never replaced by a mean.
    answers.outcome[0].update(ball_row="<noball>", above_below="<noball>")
    assert grounded_correction(answers, GroundedRules(expected_rows=True))[0] == "stay"


def test_read_captions_means_weigh_the_numbered_pieces_only(monkeypatch):
    import torch

    def fake_scores(model, processor, prefixes, images, pieces):
        scores = torch.full((len(images), len(pieces)), -30.0)
        for k, piece in enumerate(pieces):
            if piece in ("<y4>", "<y5>", "<p9>"):
                scores[:, k] = -0.7  # two row buckets equally likely; one paddle bucket
            if piece == "<noball>":
                scores[:, k] = -0.5  # likelier than any bucket: chosen, but not part of the mean
        return scores

    monkeypatch.setattr(grounding, "score_continuations", fake_scores)
    monkeypatch.setattr(grounding, "_chat", lambda processor, text, observation: "Caption?")
    (caption,) = grounding.read_captions(None, None, MOTION, [[None]], PONG, slots=4, expected=True)
    assert caption["ball_row"] == "<noball>" and caption["ball_row_expected"] == pytest.approx(4.5, abs=1e-3)
    assert caption["paddle_row"] == "<p9>" and caption["paddle_row_expected"] == pytest.approx(9.0, abs=1e-3)
    assert "above_below_expected" not in caption
    (plain,) = grounding.read_captions(None, None, MOTION, [[None]], PONG, slots=4)
    assert not any(k.endswith("_expected") for k in plain)


def test_an_outcome_without_the_ball_falls_back_to_the_look_before_it():
    answers = _answers()
    answers.outcome = [{"above_below": "<noball>", "ball_row": "<noball>", "paddle_row": "<p8>"},
                       {"above_below": " above", "ball_row": "<y14>", "paddle_row": "<p8>"}]
    assert grounded_correction(answers, GroundedRules())[0] == "down"


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.full((210, 160, 3), (144, 72, 17)) + rng.integers(0, 40, (210, 160, 3)), 0, 255).astype(np.uint8)


def test_the_grounded_reflector_asks_about_the_step_the_later_steps_and_the_outcome(monkeypatch):
    """A stub perception: which views it is asked about, and what it said, decide the correction."""
    frames = {name: [_frame(i), _frame(i + 10)] for i, name in enumerate(("now", "before", "out", "out1", "t1", "t2"))}
    asked = []

    def fake_captions(model, processor, observation, images, game, slots=None, expected=False):
        asked.append(("caption", len(images), slots))
        arrival = {"above_below": " above", "ball_row": "<y2>", "paddle_row": "<p8>"}
        return [dict(_answers().now) if slots is None else ({"paddle_row": "<p8>", **arrival}) for _ in images]

    def fake_ask(model, processor, observation, images, questions):
        asked.append(("ask", len(images), questions[0].name))
        return [{"horizontal": "toward"} for _ in images]

    monkeypatch.setattr(grounding, "read_captions", fake_captions)
    monkeypatch.setattr(grounding, "ask", fake_ask)
    reflector = object.__new__(GroundedReflector)
    reflector.__dict__.update(name="grounded", game=PONG, rules=GroundedRules(), observation=MOTION, model=None,
                              processor=None, direction=next(q for q in PONG.questions if q.name == "horizontal"),
                              outcome_views=2, later_views=2, invalid=0)
    item = ReflectionItem(frames=frames["now"], next_frames=frames["t1"], ram=make_pong_ram(), prev_ram=None,
                          action_taken="LEFT", reasoning="", reward=0.0, return_to_go=-0.3,
                          prev_frames=frames["before"], later_frames=[frames["t1"], frames["t2"]],
                          outcome_frames=[frames["out"], frames["out1"]])
    (reflection,) = reflector.reflect([item])
    assert reflection.correct_action == "RIGHT"  # the ball arrived at row bucket 2, the paddle rests at 8
    assert "<y2>" in reflection.analysis and "3 of 3" in reflection.analysis
    assert json.loads(reflection.raw_output)["directions"] == ["toward"] * 3
    assert asked == [("caption", 1, None), ("caption", 1, 4), ("caption", 1, 4), ("caption", 1, 4),
                     ("ask", 1, "horizontal"), ("ask", 1, "horizontal"), ("ask", 1, "horizontal")]


def test_the_grounded_reflector_reads_a_real_model_on_rendered_frames(tiny_model):
    """End to end with a (random-init) model: every answer is one of the options, the action legal."""
    reflector = build_reflector(f"grounded:{tiny_model}", game=PONG, actions=PONG.actions, observation=MOTION,
                                acting_model=None)
    item = ReflectionItem(frames=[_frame(1), _frame(2)], next_frames=[_frame(2), _frame(3)], ram=make_pong_ram(),
                          prev_ram=None, action_taken="NOOP", reasoning="", reward=0.0, return_to_go=-0.1,
                          prev_frames=[_frame(0), _frame(1)], later_frames=[[_frame(2), _frame(3)]] * 2,
                          outcome_frames=[[_frame(5), _frame(6)]] * 2)
    (answers,) = reflector.answers([item])
    slots = dict(PONG.caption_slots)
    assert all(answers.now[name] in pieces for name, pieces in slots.items())
    # The row and column slots also carry the mean bucket under the model's probabilities.
    means = {k: v for k, v in answers.now.items() if k.endswith("_expected")}
    assert set(means) == {"ball_row_expected", "ball_col_expected", "paddle_row_expected"}
    assert all(0.0 <= v <= 15.0 for v in means.values())
    assert len(answers.outcome) == 2 and len(answers.directions) == 3
    (reflection,) = reflector.reflect([item])
    assert reflection.correct_action in PONG.class_actions.values()


def test_games_without_a_mapping_refuse_the_grounded_reflector(tiny_model):
    with pytest.raises(ValueError, match="no grounded reflection is known for Breakout"):
        build_reflector(f"grounded:{tiny_model}", game=Game("ALE/Breakout-v5"), actions=["NOOP"],
                        observation=MOTION, acting_model=None)
    with pytest.raises(ValueError, match="grounded needs episodes played by a model"):
        build_reflector("grounded", game=PONG, actions=PONG.actions, observation=MOTION, acting_model="random")


# --- self-imitation ----------------------------------------------------------------------------


def test_self_imitation_keeps_the_steps_that_went_well():
    returns = np.array([0.5, -0.2, 0.0, 0.9, -0.9, -0.5, -0.1, -0.7])
    episodes = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    chosen, good = select_good_steps(returns, episodes)
    assert chosen.tolist() == [0, 3] and good == 2  # a positive return-to-go
    # Advantage: beating the episode's mean (episode 0: 0.3, episode 1: -0.55).
    chosen, good = select_good_steps(returns, episodes, advantage=True)
    assert chosen.tolist() == [0, 3, 5, 6] and good == 4
    chosen, _ = select_good_steps(returns, episodes, advantage=True, rate=0.5, seed=1)
    assert len(chosen) == 2 and set(chosen.tolist()) <= {0, 3, 5, 6}


def _write_episodes(path, n=12):
    """One constructed episode: the ball comes toward the player and reaches the column at step 8."""
    xs = [100 + 11 * s for s in range(n)]
    rewards = [0.0] * n
    rewards[-2] = -1.0
    returns = [(-1.0 * 0.99 ** (n - 2 - s)) if s <= n - 2 else 0.0 for s in range(n)]
    returns[:3] = [0.4, 0.3, 0.2]  # three steps that went well, for self-imitation
    rows = [{"episode_id": 0, "seed": 0, "step": s, "frame": _frame(s), "action": ["RIGHT", "LEFT", "NOOP"][s % 3],
             "reasoning": "", "raw_output": "", "valid": True, "teacher": False, "reward": rewards[s],
             "terminated": s == n - 1, "truncated": False, "return_to_go": returns[s],
             "ram": make_pong_ram(ball_x=min(xs[s], 200), ball_y=100, player_y=120).tolist(), "model": "random",
             "iteration": 1} for s in range(n)]
    write_shard(path, "episode-000000", rows, EPISODE_FEATURES)
    return str(path)


def test_self_imitation_reflections_are_the_actions_taken(tmp_path):
    episodes = _write_episodes(tmp_path / "ep")
    summary = reflect(ReflectArguments(episodes=episodes, reflector="self-imitation", reflection_rate=1.0,
                                       output_dir=str(tmp_path / "refl"), progress=False, frames=2,
                                       encoding="motion", crop=True, image_size=128))
    ds = load_dataset(str(tmp_path / "refl"), split="train")
    assert summary["reflected"] == 3 and ds["source_step"] == [0, 1, 2]
    assert ds["correct_action"] == ds["action_taken"] == ["RIGHT", "LEFT", "NOOP"]
    answers = json.loads(ds[0]["perception_answers"])
    assert set(answers) == {q.name for q in PONG.questions} and answers["ball_visible"] in ("yes", "no")


def test_grounded_reflection_phase_writes_the_outcome_it_used(tmp_path, tiny_model):
    episodes = _write_episodes(tmp_path / "ep")
    summary = reflect(ReflectArguments(episodes=episodes, reflector=f"grounded:{tiny_model}", reflect_on="all",
                                       reflection_rate=0.25, output_dir=str(tmp_path / "refl"), progress=False,
                                       frames=2, encoding="motion", crop=True, image_size=128))
    assert summary["reflected"] == 3 and summary["outcome"] == "ahead" and summary["invalid"] == 0  # Pong's default
    ds = load_dataset(str(tmp_path / "refl"), split="train")
    assert all(a.startswith("I said this frame") for a in ds["analysis"])


# --- rehearsal ---------------------------------------------------------------------------------


def _reflections(n: int) -> Dataset:
    keys = [json.dumps({"above_below": "above", "vertical": None, "horizontal": "toward", "ball_third": "top",
                        "ball_visible": "yes"})] * n
    completion = [[{"role": "assistant", "content": [{"type": "text", "text": '{"action": "NOOP"}'}]}]] * n
    prompt = [[{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Your move?"}]}]]
    from PIL import Image

    image = Image.fromarray(_frame(0)[:128, :128])
    return Dataset.from_dict({"prompt": prompt * n, "completion": completion, "image": [image] * n,
                              "perception_answers": keys})


@pytest.mark.parametrize("samples,share,expected", [(80, 0.2, 20), (100, 0.0, 0), (10, 0.5, 10), (3, 0.2, 1)])
def test_rehearsal_makes_up_the_configured_share(samples, share, expected):
    assert rehearsal_count(samples, share) == expected
    if samples + expected:
        assert abs(expected / (samples + expected) - share) <= 0.5 / (samples + expected) + 1e-9


def test_rehearsal_mixes_question_samples_with_their_answer_keys(monkeypatch):
    sources = _reflections(10)
    training = sources.select_columns(["prompt", "completion", "image"])
    monkeypatch.setattr("vlmrl.rehearsal.load_dataset_reference", lambda ref: sources)
    mixed, added = mix_rehearsal(training, ["refl"], PONG, MOTION, 0.2, seed=0)
    assert added == 2 and len(mixed) == 12 and mixed.column_names == training.column_names
    questions = [r for r in mixed if r["prompt"][0]["role"] == "user" and "Your move" not in r["prompt"][0]
                 ["content"][1]["text"]]
    assert len(questions) == 2
    by_text = {q.text: q for q in PONG.questions}
    for row in questions:
        question = by_text[row["prompt"][0]["content"][1]["text"].removeprefix("Magenta: now, green: before. ")]
        # "vertical" has no answer in these keys: never asked.
        assert question.name != "vertical"
        assert row["completion"][0]["content"][0]["text"] == json.loads(sources[0]["perception_answers"])[
            question.name]


def test_rehearsal_needs_answer_keys(monkeypatch):
    bare = _reflections(4).remove_columns(["perception_answers"])
    monkeypatch.setattr("vlmrl.rehearsal.load_dataset_reference", lambda ref: bare)
    with pytest.raises(ValueError, match="perception_answers"):
        mix_rehearsal(bare, ["refl"], PONG, MOTION, 0.2)
    with pytest.raises(ValueError, match="no reflection row"):
        rehearsal_rows(_reflections(2).map(lambda r: {"perception_answers": "{}"}), PONG, MOTION, 3)


def test_the_recorded_horizon_is_what_applies_so_older_records_still_match(tmp_path):
    from vlmrl.reflection import recorded_settings

    def args(**kw):
        return ReflectArguments(episodes=str(tmp_path), output_dir=str(tmp_path / "r"), **kw)

    # The writing reflectors and the oracle look 100 steps at most, as runs recorded before the
    # horizon could be left to the game said.
    assert args(reflector="oracle").hindsight() == ("next", 100)
    assert recorded_settings(args(reflector="oracle"))["outcome_max_steps"] == 100
    # Grounded on Pong looks its teacher's 2 steps ahead; told otherwise, what it is told.
    assert args(reflector="grounded").hindsight() == ("ahead", 2)
    assert recorded_settings(args(reflector="grounded"))["outcome_max_steps"] is None
    assert args(reflector="grounded", outcome="ball_at_paddle").hindsight() == ("ball_at_paddle", 100)
    assert args(reflector="grounded", outcome="ahead", outcome_max_steps=5).hindsight() == ("ahead", 5)


def test_a_grounded_reflection_records_the_rules_it_applied(tmp_path):
    from vlmrl.reflection import recorded_settings

    args = ReflectArguments(episodes=str(tmp_path / "e"), reflector="grounded:some/base",
                            output_dir=str(tmp_path / "r"))
    assert recorded_settings(args)["grounded_rules"]["expected_rows"] is True
    oracle = ReflectArguments(episodes=str(tmp_path / "e"), reflector="oracle", output_dir=str(tmp_path / "r"))
    assert "grounded_rules" not in recorded_settings(oracle)
