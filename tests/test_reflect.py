import json

import numpy as np
import pytest
from datasets import load_dataset

import vlmrl.collection as collection
from vlmrl.configs import CollectArguments, ReflectArguments
from vlmrl.games import get_game
from vlmrl.observation import ObservationConfig
from vlmrl.reflection import reflect, reflection_accuracy, select_steps
from vlmrl.reflectors import ModelReflector, ReflectionItem, build_reflector

MOTION = dict(frames=2, encoding="motion", crop=True, image_size=128)

PONG = get_game("ALE/Pong-v5")


def test_poor_steps_are_those_with_a_negative_stored_return():
    # The stored return_to_go (collection's gamma: the one gamma of the loop) marks the poor steps.
    returns = np.array([-0.2, -0.4, -1.0, 0.5, 0.7, 1.0, 0.0, 0.0, 0.0])
    chosen, n_poor = select_steps(returns, reflect_on="poor", rate=1.0)
    assert n_poor == 3 and chosen.tolist() == [0, 1, 2]
    chosen, _ = select_steps(returns, reflect_on="all", rate=1.0)
    assert chosen.tolist() == list(range(9))
    # Sampling is seeded, without replacement, and capped.
    a, _ = select_steps(returns, reflect_on="all", rate=0.5, seed=3)
    b, _ = select_steps(returns, reflect_on="all", rate=0.5, seed=3)
    assert a.tolist() == b.tolist() and len(a) == 4 and len(set(a.tolist())) == 4
    c, _ = select_steps(returns, reflect_on="all", rate=1.0, max_reflections=2)
    assert len(c) == 2


def test_reflection_accuracy_on_a_known_case():
    # RIGHTFIRE is the same class (up) as RIGHT; one of three disagrees; rows without oracle are skipped.
    corrected = ["RIGHTFIRE", "LEFT", "NOOP", "LEFT"]
    acc = reflection_accuracy(PONG, corrected, ["RIGHT", "LEFTFIRE", "RIGHT", None])
    assert acc == pytest.approx(2 / 3)
    assert reflection_accuracy(PONG, ["LEFT"], [None]) is None


@pytest.fixture(scope="module")
def episodes(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("episodes") / "ep"
    collection.collect(CollectArguments(policy="model", model=tiny_model, episodes=2, max_steps=40, num_envs=2,
                                        output_dir=str(out), progress=False, iteration=1, **MOTION))
    return str(out)


def test_oracle_reflections_are_trl_prompt_completion_data_with_an_image(tmp_path, episodes):
    out = tmp_path / "refl"
    summary = reflect(ReflectArguments(episodes=episodes, reflector="oracle", reflect_on="all", reflection_rate=1.0,
                                       output_dir=str(out), progress=False, **MOTION))
    ds = load_dataset(str(out), split="train")
    assert len(ds) == summary["reflected"] == summary["selected"] == 80
    row = ds[0]
    assert row["prompt"][0]["role"] == "system" and row["prompt"][1]["role"] == "user"
    assert [c["type"] for c in row["prompt"][1]["content"]][0] == "image"
    answer = json.loads(row["completion"][0]["content"][0]["text"])
    assert answer["action"] == row["correct_action"] and answer["reasoning"]
    assert row["image"].size == (128, 128)
    assert summary["accuracy"] == 1.0  # the oracle agrees with itself
    assert "y=" in row["analysis"] or "out of play" in row["analysis"]
    assert set(ds["iteration"]) == {1}
    from trl.data_utils import is_conversational

    assert is_conversational({"prompt": row["prompt"], "completion": row["completion"]})


def test_reflection_resumes_and_refuses_other_settings(tmp_path, episodes, monkeypatch):
    import vlmrl.reflection as reflection

    monkeypatch.setattr(reflection, "CHUNK", 16)
    args = dict(episodes=episodes, reflector="oracle", reflect_on="all", reflection_rate=0.5, output_dir=str(tmp_path),
                progress=False, **MOTION)
    real, calls = reflection.write_shard, {"n": 0}

    def crash(*a, **kw):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(reflection, "write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        reflect(ReflectArguments(**args))
    monkeypatch.setattr(reflection, "write_shard", real)
    summary = reflect(ReflectArguments(**args))
    ds = load_dataset(str(tmp_path), split="train")
    keys = list(zip(ds["source_episode_id"], ds["source_step"], strict=True))
    assert len(keys) == len(set(keys)) == summary["selected"] == 40
    with pytest.raises(ValueError, match="other settings"):
        reflect(ReflectArguments(**{**args, "reflection_rate": 0.9}))


def test_self_reflector_drops_and_counts_malformed_answers(tmp_path, episodes, tiny_model):
    summary = reflect(ReflectArguments(episodes=episodes, reflector="self", reflect_on="all", reflection_rate=0.1,
                                       max_new_tokens=12, output_dir=str(tmp_path), progress=False, **MOTION))
    # A random-init model cannot write the JSON: every answer is counted as invalid and dropped, no crash.
    assert summary["selected"] == 8
    assert summary["invalid"] + summary["reflected"] == 8
    assert summary["invalid"] >= 1


def test_model_reflector_parses_a_good_answer(tiny_model, pong_actions, monkeypatch):
    reflector = ModelReflector("self", tiny_model, PONG, pong_actions, ObservationConfig(**MOTION))
    good = json.dumps({"analysis": "ball below", "correct_action": "LEFT", "correct_reasoning": "go down"})
    monkeypatch.setattr(reflector, "_generate", lambda items, sample: [good, "garbage"])
    frame = np.zeros((210, 160, 3), np.uint8)
    item = ReflectionItem([frame, frame], [frame, frame], np.zeros(128, np.uint8), None, "RIGHT", "", -1.0, -0.5)
    out = reflector.reflect([item, item])
    assert out[0].correct_action == "LEFT" and out[0].analysis == "ball below" and out[1] is None
    assert reflector.invalid == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reflector="teacher"), "unknown reflector"),
        (dict(reflector="oracle", game="ALE/Pooyan-v5"), "has none"),
    ],
)
def test_bad_reflector_settings(kwargs, message, pong_actions):
    game = get_game(kwargs.pop("game", "ALE/Pong-v5"))
    with pytest.raises(ValueError, match=message):
        build_reflector(kwargs["reflector"], game=game, actions=pong_actions,
                        observation=ObservationConfig(**MOTION), acting_model="m")


def test_episodes_without_required_columns(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"episode_id": [0], "step": [0]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="lacks columns"):
        reflect(ReflectArguments(episodes=str(tmp_path / "bad"), reflector="oracle", output_dir=str(tmp_path / "o"),
                                 progress=False))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reflect(ReflectArguments(episodes=str(tmp_path / "missing"), reflector="oracle",
                                 output_dir=str(tmp_path / "o2"), progress=False))


def test_action_only_completions(tmp_path, episodes):
    reflect(ReflectArguments(episodes=episodes, reflector="oracle", reflect_on="all", reflection_rate=0.25,
                             completion_reasoning=False, output_dir=str(tmp_path), progress=False, **MOTION))
    ds = load_dataset(str(tmp_path), split="train")
    answers = [json.loads(c[0]["content"][0]["text"]) for c in ds["completion"]]
    assert answers and all(a == {"action": r} for a, r in zip(answers, ds["correct_action"], strict=True))
    assert all(ds["correct_reasoning"])  # the reasoning is still recorded beside the completion
