
import numpy as np
import pytest

from vlmrl.env import AtariBatch, game_name, make_env
from vlmrl.games import get_game
from vlmrl.observation import ObservationConfig, encode_batch, encode_observation, motion_image

PONG = get_game("ALE/Pong-v5")


def test_pong_batch_steps_with_ram_and_action_names(pong_actions):
    batch = AtariBatch("ALE/Pong-v5", 2)
    assert batch.action_names == pong_actions
    frame, ram = batch.reset(0, seed=1)
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8
    assert ram.shape == (128,) and ram.dtype == np.uint8
    batch.reset(1, seed=2)
    results = batch.step({0: "RIGHT", 1: "LEFT"})
    assert set(results) == {0, 1}
    assert results[0].ram.shape == (128,) and results[0].frame.shape == (210, 160, 3)
    # The paddles move apart: RIGHT is up (smaller y), LEFT down, within a few steps.
    for _ in range(10):
        results = batch.step({0: "RIGHT", 1: "LEFT"})
    assert int(results[0].ram[51]) < int(results[1].ram[51])
    batch.close()


def test_same_seed_same_episode():
    a, b = AtariBatch("ALE/Pong-v5", 1), AtariBatch("ALE/Pong-v5", 1)
    fa, _ = a.reset(0, seed=7)
    fb, _ = b.reset(0, seed=7)
    for _ in range(30):
        ra, rb = a.step({0: "RIGHT"})[0], b.step({0: "RIGHT"})[0]
    assert np.array_equal(ra.frame, rb.frame) and np.array_equal(ra.ram, rb.ram)


def test_v5_protocol_defaults():
    env = make_env("ALE/Pong-v5")
    assert env.unwrapped._frameskip == 4
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)


def test_unknown_game_id_message():
    with pytest.raises(ValueError, match="unknown game id 'ALE/Pongg-v5'.*ALE/Pong-v5"):
        make_env("ALE/Pongg-v5")


def test_game_name():
    assert game_name("ALE/Pong-v5") == "Pong"
    assert game_name("PongNoFrameskip-v4") == "Pong"


def test_motion_encoding_shows_ball_and_never_all_zero():
    env = make_env("ALE/Pong-v5")
    frame, _ = env.reset(seed=0)
    for _ in range(60):
        previous = frame
        frame, *_ = env.step(0)
    image = motion_image(frame, previous, PONG)
    assert image.dtype == np.uint8 and image.min() >= 1  # never exactly 0: Idefics3 drops all-zero images
    cfg = ObservationConfig(frames=2, encoding="motion", crop=True, image_size=128)
    [img] = encode_observation([previous, frame], cfg, PONG)
    assert img.size == (128, 128)
    with pytest.raises(ValueError, match="frames: 2"):
        ObservationConfig(frames=1, encoding="motion")
    with pytest.raises(ValueError, match="expected 2 frames"):
        encode_observation([frame], cfg, PONG)


@pytest.mark.parametrize(
    "config",
    [
        ObservationConfig(frames=2, encoding="motion", crop=True, image_size=128),
        ObservationConfig(frames=2, encoding="motion", image_size=96),
        ObservationConfig(frames=2, encoding="rgb", image_size=128),
        ObservationConfig(frames=1, encoding="rgb", image_size=384),
        ObservationConfig(frames=1, encoding="rgb", crop=True, image_size=100),
        ObservationConfig(frames=2, encoding="motion", crop=True, image_size=128, resample="bilinear"),
    ],
)
def test_batch_encoding_is_pixel_exact(config):
    env = make_env("ALE/Pong-v5")
    frames = [env.reset(seed=5)[0]]
    for i in range(80):  # the ball in play, the paddle moving
        frames.append(env.step(i % 3)[0])
    observations = [frames[i - config.frames + 1 : i + 1] for i in range(60, 66)]
    batch = encode_batch(observations, config, PONG)
    one_by_one = np.stack([np.stack([np.asarray(im) for im in encode_observation(o, config, PONG)])
                           for o in observations])
    assert batch.dtype == np.uint8 and np.array_equal(batch, one_by_one)
    cache: dict = {}  # frames met again in the next call are taken from the cache: the same pixels
    assert np.array_equal(encode_batch(observations[:3], config, PONG, cache), one_by_one[:3])
    assert np.array_equal(encode_batch(observations[1:], config, PONG, cache), one_by_one[1:])
    assert len(cache) == (len(observations) + config.frames - 1 if config.resample == "nearest" else 0)  # + layout
    first = encode_batch(observations, config, PONG, cache, channels_first=True)  # the model's layout
    assert np.array_equal(first, one_by_one.transpose(0, 1, 4, 2, 3)) and first.flags.c_contiguous
