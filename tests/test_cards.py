"""The model card says what the model sees, and its snippet builds that observation and acts."""

import contextlib
import io
import json
import re

from PIL import Image

from vlmrl.cards import EVAL_VIDEO, add_eval_results_to_card, model_card
from vlmrl.observation import ObservationConfig, recorded_observation
from vlmrl.results import build_results


def test_card_snippet_builds_the_observation_and_acts(tiny_model, tmp_path, monkeypatch, pong_actions):
    observation = ObservationConfig(**recorded_observation(tiny_model))
    assert observation.encoding == "motion" and observation.frames == 2
    card = model_card(base_model="data/models/tiny-smolvlm", iteration=1, observation=observation,
                      model_path=tiny_model)
    text = str(card)
    assert "## What the model sees" in text and "one 128×128 image made of the last two raw frames" in text
    code = re.search(r"```python\n(.*?)```", text.split("## What the model sees")[1], re.DOTALL).group(1)
    assert "encode_observation(frames, observation, game)" in code and 'get_game("ALE/Pong-v5")' in code
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "card-snippet", "exec"), {})  # noqa: S102 - the card's own code, run as a reader would
    assert printed.getvalue().split()[-1] in pong_actions
    assert Image.open(tmp_path / "observation.png").size == (128, 128)
    hub = str(model_card(base_model="b", iteration=2, observation=observation, repo_id="user/m"))
    assert 'snapshot_download("user/m", revision="iteration-2")' in hub


def test_evaluation_video_goes_into_the_card(tmp_path):
    gif = tmp_path / "eval" / "episode_000.gif"
    gif.parent.mkdir()
    Image.new("RGB", (8, 8)).save(gif)
    results = build_results(model="m", game="ALE/Pong-v5", policy="model", seeds=[1], returns=[-21.0],
                            oracle_agreement=0.5, invalid_rate=0.0, env_steps=10, steps_per_s=1.0, video=str(gif))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "results.json").write_text(json.dumps(results))
    card = add_eval_results_to_card(tmp_path / "ckpt", tmp_path / "results.json")
    assert (tmp_path / "ckpt" / EVAL_VIDEO).exists() and f"]({EVAL_VIDEO})" in card.text
    again = add_eval_results_to_card(tmp_path / "ckpt", tmp_path / "results.json")  # replaced, not repeated
    assert again.text.count(f"]({EVAL_VIDEO})") == 1
