import numpy as np
import pytest
import torch

from vlmrl.env import AtariBatch
from vlmrl.games import get_game
from vlmrl.models import load_processor, load_vlm
from vlmrl.observation import ObservationConfig
from vlmrl.policies import Observation
from vlmrl.policies.random import RandomPolicy
from vlmrl.policies.vlm import PromptEncoder, VLMPolicy
from vlmrl.prompts import ANSWER_PREFIX

MOTION = ObservationConfig(frames=2, encoding="motion", crop=True, image_size=128)

PONG = get_game("ALE/Pong-v5")


@pytest.fixture(scope="module")
def frames():
    batch = AtariBatch("ALE/Pong-v5", 1)
    frame, ram = batch.reset(0, seed=3)
    out = []
    for _ in range(70):
        res = batch.step({0: "NOOP"})[0]
        out.append((res.frame, res.ram))
    return out


def _observations(frames, n):
    return [Observation([frames[i][0], frames[i + 1][0]], frames[i + 1][1], frames[i][1]) for i in range(50, 50 + n)]


@pytest.mark.parametrize("observation", [MOTION, ObservationConfig(frames=2, encoding="rgb", image_size=128)])
def test_fast_encoding_matches_the_processor(tiny_model, pong_actions, frames, observation):
    processor = load_processor(tiny_model, observation)
    encoder = PromptEncoder(processor, PONG, pong_actions, observation)
    assert encoder.fast
    obs = _observations(frames, 3)
    fast = encoder.encode(obs, " " + ANSWER_PREFIX)
    encoder.fast = False
    slow = encoder.encode(obs, " " + ANSWER_PREFIX)
    assert torch.equal(fast["input_ids"], slow["input_ids"])
    assert torch.allclose(fast["pixel_values"], slow["pixel_values"].float(), atol=1e-6)
    assert torch.equal(fast["pixel_attention_mask"].bool(), slow["pixel_attention_mask"].bool())


def test_constrained_scores_every_legal_action_in_one_forward(tiny_model, pong_actions, frames):
    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, MOTION)
    policy = VLMPolicy(model, processor, PONG, pong_actions, MOTION)
    assert policy._single_token
    obs = _observations(frames, 4)
    logprobs = policy.action_logprobs(obs)
    assert logprobs.shape == (4, 6) and torch.isfinite(logprobs).all()
    decisions = policy.act(obs)
    assert all(d.action in pong_actions and d.valid for d in decisions)
    # Greedy picks the most likely action; the multi-token path ranks the same way on this tokenizer
    # (each name is one token; it also scores the closing quote, so only the shape and order are compared).
    assert [d.action for d in decisions] == [pong_actions[i] for i in logprobs.argmax(-1).tolist()]
    policy._single_token = False
    seq = policy.action_logprobs(obs)
    assert seq.shape == (4, 6) and torch.isfinite(seq).all()


@pytest.mark.parametrize("observation", [MOTION, ObservationConfig(frames=2, encoding="rgb", image_size=128)])
def test_prefix_cache_scores_as_the_plain_forward(tiny_model, pong_actions, frames, observation):
    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, observation)
    cached = VLMPolicy(model, processor, PONG, pong_actions, observation)
    plain = VLMPolicy(model, processor, PONG, pong_actions, observation, prefix_cache=False)
    for n in (5, 2, 5):  # the stored prefix is copied per call, never grown by one
        obs = _observations(frames, n)
        assert torch.allclose(cached.action_logprobs(obs), plain.action_logprobs(obs), atol=1e-4)
    assert cached.prefix_cache and cached._prefix_verified and len(cached._prefixes) == 1
    (prefix, layers), = cached._prefixes.items()
    ids = cached.encoder.encode(_observations(frames, 1), " " + ANSWER_PREFIX)["input_ids"][0].tolist()
    assert list(prefix) == ids[: ids.index(model.config.image_token_id)]  # the text before the first image
    assert all(k.shape[0] == 1 and k.shape[2] == len(prefix) for k, _ in layers)
    assert not plain._prefixes


@pytest.mark.parametrize("fault", ["wrong cache", "forward refuses it"])
def test_prefix_cache_that_fails_is_turned_off(tiny_model, pong_actions, frames, monkeypatch, fault):
    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, MOTION)
    policy = VLMPolicy(model, processor, PONG, pong_actions, MOTION)
    if fault == "wrong cache":  # scores that differ from the plain forward's
        real = policy._build_prefix
        monkeypatch.setattr(policy, "_build_prefix", lambda *a: [(torch.randn_like(k), v) for k, v in real(*a)])
    else:  # a model (or transformers version) whose forward does not take the cache
        monkeypatch.setattr(policy, "_forward_on_prefix", lambda *a: (_ for _ in ()).throw(TypeError("no cache")))
    obs = _observations(frames, 3)
    with pytest.warns(UserWarning, match="prefix cache"):
        scores = policy.action_logprobs(obs)
    assert not policy.prefix_cache
    plain = VLMPolicy(model, processor, PONG, pong_actions, MOTION, prefix_cache=False)
    assert torch.allclose(scores, plain.action_logprobs(obs), atol=1e-5)


def test_sampling_is_seeded(tiny_model, pong_actions, frames):
    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, MOTION)
    obs = _observations(frames, 8)
    picks = [
        [d.action for d in VLMPolicy(model, processor, PONG, pong_actions, MOTION, temperature=5.0,
                                     seed=1).act(obs)]
        for _ in range(2)
    ]
    assert picks[0] == picks[1]


def test_generate_mode_records_invalid_and_falls_back(tiny_model, pong_actions, frames):
    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, MOTION)
    policy = VLMPolicy(model, processor, PONG, pong_actions, MOTION, decode="generate",
                       max_new_tokens=8, fallback_action="NOOP")
    decisions = policy.act(_observations(frames, 2))
    # A random-init model answers garbage: recorded as invalid, the fallback is played, nothing raises.
    for d in decisions:
        assert isinstance(d.raw_output, str)
        assert d.valid or d.action == "NOOP"


def test_sampled_answers_follow_each_episode_stream_whatever_the_batch(tiny_model, pong_actions, frames):
    import numpy as np

    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, MOTION)
    policy = VLMPolicy(model, processor, PONG, pong_actions, MOTION, decode="generate", temperature=1.5,
                       max_new_tokens=6)

    def answers(episode_seeds: list[int]) -> dict[int, str]:
        obs = _observations(frames, len(episode_seeds))
        for o, seed in zip(obs, episode_seeds, strict=True):
            o.rng = np.random.default_rng(seed)
        return {seed: d.raw_output for seed, d in zip(episode_seeds, policy.act(obs), strict=True)}

    together = answers([11, 12, 13])
    alone = answers([12])
    assert alone[12] == answers([12])[12]  # the same stream, the same sample
    # Episode 12 sampled beside others or alone (same frame: the second observation) draws the same text.
    obs = _observations(frames, 2)[1:]
    obs[0].rng = np.random.default_rng(12)
    assert policy.act(obs)[0].raw_output == together[12]
    assert len(set(together.values())) > 1  # the streams differ: the samples differ


def test_action_bias_moves_the_decision_threshold(tiny_model, pong_actions, frames):
    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, MOTION)
    obs = _observations(frames, 8)
    scores = VLMPolicy(model, processor, PONG, pong_actions, MOTION).action_logprobs(obs)
    classes = [PONG.action_class(a) for a in pong_actions]

    def picks(bias):
        return [PONG.action_class(d.action)
                for d in VLMPolicy(model, processor, PONG, pong_actions, MOTION, action_bias=bias).act(obs)]

    # A bias larger than any gap between the scores makes its class win everywhere, either way round.
    gap = float(scores.max() - scores.min()) + 1.0
    assert picks({"up": gap}) == ["up"] * 8
    assert "stay" not in picks({"stay": -gap})
    # A bias of zero changes nothing, and the pick is the argmax of the shifted scores.
    assert picks({"stay": 0.0}) == [classes[i] for i in scores.argmax(-1).tolist()]
    shift = torch.tensor([0.7 if c == "down" else 0.0 for c in classes])
    assert picks({"down": 0.7}) == [classes[i] for i in (scores + shift).argmax(-1).tolist()]


def test_bad_policy_settings(tiny_model, pong_actions):
    model = load_vlm(tiny_model)
    processor = load_processor(tiny_model, MOTION)
    with pytest.raises(ValueError, match="decode"):
        VLMPolicy(model, processor, PONG, pong_actions, MOTION, decode="beam")
    with pytest.raises(ValueError, match="fallback"):
        VLMPolicy(model, processor, PONG, pong_actions, MOTION, fallback_action="JUMP")
    with pytest.raises(ValueError, match="Pong-v5's action classes are down, stay, up"):
        VLMPolicy(model, processor, PONG, pong_actions, MOTION, action_bias={"left": 1.0})


def test_random_policy_is_seeded(pong_actions):
    obs = [Observation([np.zeros((210, 160, 3), np.uint8)], np.zeros(128, np.uint8))] * 20
    a = [d.action for d in RandomPolicy(pong_actions, seed=4).act(obs)]
    b = [d.action for d in RandomPolicy(pong_actions, seed=4).act(obs)]
    assert a == b and len(set(a)) > 1
