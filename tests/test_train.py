import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl import ModelConfig, SFTConfig

import vlmrl.collection as collection
from vlmrl.cli import parse
from vlmrl.configs import CollectArguments, ReflectArguments
from vlmrl.games import get_game
from vlmrl.observation import ObservationConfig
from vlmrl.reflection import reflect
from vlmrl.training import TrainScriptArguments, cpu_defaults, train

ROOT = Path(__file__).resolve().parent.parent
MOTION = dict(frames=2, encoding="motion", crop=True, image_size=128)


@pytest.fixture(scope="module")
def reflections(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("data")
    collection.collect(CollectArguments(policy="model", model=tiny_model, episodes=2, max_steps=24, num_envs=2,
                                        output_dir=str(root / "ep"), progress=False, **MOTION))
    reflect(ReflectArguments(episodes=str(root / "ep"), reflector="oracle", reflect_on="all", reflection_rate=1.0,
                             output_dir=str(root / "refl"), progress=False, **MOTION))
    return str(root / "refl")


def _args(argv):
    return parse((TrainScriptArguments, SFTConfig, ModelConfig), argv=argv, defaults=cpu_defaults())


def _base_argv(tiny_model, reflections, out, *extra):
    return ["--model_name_or_path", tiny_model, "--reflections", reflections, "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--logging_steps", "1",
            "--report_to", "none", "--frames", "2", "--encoding", "motion", "--crop", "true", "--image_size", "128",
            "--disable_tqdm", "true", *extra]


def test_training_lowers_the_loss_and_the_checkpoint_plays(tmp_path, tiny_model, reflections):
    out = tmp_path / "ckpt"
    metrics = train(*_args(_base_argv(tiny_model, reflections, out, "--num_train_epochs", "3", "--save_strategy",
                                      "no")))
    assert metrics["samples"] == 48 and metrics["global_steps"] == 18
    assert metrics["last_logged_loss"] < metrics["first_logged_loss"]
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"):
        assert (out / name).exists(), name
    card = (out / "README.md").read_text()
    assert tiny_model in card and "iteration" in card.lower()
    # The probe finds the observation the checkpoint was fine-tuned on without being told.
    from vlmrl.probe import observation_for

    assert observation_for(out) == ObservationConfig(**MOTION)
    # The checkpoint loads and acts in collect.py.
    summary = collection.collect(CollectArguments(policy="model", model=str(out), episodes=1, max_steps=5,
                                                  num_envs=1, output_dir=str(tmp_path / "play"), progress=False,
                                                  **MOTION))
    assert summary["steps"] == 5 and summary["invalid_rate"] == 0.0


def test_lora_path_merges_into_a_plain_checkpoint(tmp_path, tiny_model, reflections):
    out = tmp_path / "lora"
    metrics = train(*_args(_base_argv(tiny_model, reflections, out, "--num_train_epochs", "1", "--use_peft", "true",
                                      "--lora_r", "4", "--save_strategy", "no")))
    assert metrics["lora"] is True
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_recipe_yaml_overridden_from_the_cli(tmp_path):
    recipe = tmp_path / "train.yaml"
    recipe.write_text("num_train_epochs: 7\nlearning_rate: 1.0e-4\nper_device_train_batch_size: 3\nframes: 2\n"
                      "encoding: motion\nreflections: [a, b]\n")
    script, training, model = _args(["--config", str(recipe), "--learning_rate", "3e-3", "--output_dir",
                                     str(tmp_path / "o"), "--model_name_or_path", "m"])
    assert training.num_train_epochs == 7 and training.learning_rate == 3e-3
    assert training.per_device_train_batch_size == 3 and script.encoding == "motion"
    assert script.reflections == ["a", "b"] and model.model_name_or_path == "m"
    assert not training.bf16  # no GPU here: fp32 without the user asking


def test_resume_from_the_last_checkpoint(tmp_path, tiny_model, reflections):
    out = tmp_path / "resume"
    argv = _base_argv(tiny_model, reflections, out, "--num_train_epochs", "2", "--save_strategy", "steps",
                      "--save_steps", "6")
    train(*_args([*argv, "--max_steps", "6"]))  # an interrupted run: stopped after step 6, checkpoint-6 saved
    assert (out / "checkpoint-6").is_dir()
    metrics = train(*_args(argv))
    assert metrics["resumed_from"].endswith("checkpoint-6") and metrics["global_steps"] == 12


def _run_train(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True, env=env)


def test_bad_inputs_get_clear_messages(tmp_path, tiny_model, reflections):
    from datasets import Dataset

    Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "malformed"))
    from vlmrl.data import write_shard
    from vlmrl.reflection import reflection_features

    write_shard(tmp_path / "empty", "reflections-00000", [], reflection_features(1))
    cases = [
        (["--reflections", str(tmp_path / "malformed")], "lacks columns"),
        (["--reflections", str(tmp_path / "empty")], "empty"),
        (["--reflections", str(tmp_path / "missing")], "does not exist"),
    ]
    for extra, message in cases:
        result = _run_train("--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "o"), *extra)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = _run_train("--model_name_or_path", tiny_model, "--reflections", reflections, "--output_dir", str(other))
    assert result.returncode == 2 and "did not write" in result.stderr


@pytest.mark.slow
def test_two_cpu_processes_with_gloo(tmp_path, tiny_model, reflections):
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "ddp"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "train.py",
           *_base_argv(tiny_model, reflections, out, "--num_train_epochs", "1", "--save_strategy", "no")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    # 48 samples, batch 8 per process, 2 processes: 3 optimizer steps.
    assert metrics["global_steps"] == 3


def test_balancing_oversamples_the_rarer_action_classes():
    from collections import Counter

    from datasets import Dataset

    from vlmrl.training import balance_by_action_class

    ds = Dataset.from_dict({"correct_action": ["NOOP"] * 6 + ["LEFT", "LEFTFIRE"] + ["RIGHT"], "row": list(range(9))})
    pong = get_game("ALE/Pong-v5")
    balanced = balance_by_action_class(ds, pong, seed=1)
    counts = Counter(pong.action_class(a) for a in balanced["correct_action"])
    assert counts == {"stay": 6, "down": 6, "up": 6}
    assert set(balanced["row"]) == set(range(9))  # nothing dropped, the rare ones repeated
    with pytest.raises(ValueError, match="correct_action"):
        balance_by_action_class(Dataset.from_dict({"row": [1]}), pong)


def test_a_fixed_budget_draws_the_same_number_of_samples_whatever_the_pool():
    from collections import Counter

    from vlmrl.training import draw_budget

    older = ["stay"] * 70 + ["up"] * 20 + ["down"] * 10
    newest = ["stay"] * 30 + ["up"] * 5 + ["down"] * 5
    for copies in (1, 8):  # iteration 2's pool, and a later one's eight times larger
        sizes, labels = [100 * copies, 40], older * copies + newest
        picks = draw_budget(sizes, labels, budget=600, newest_share=0.5, seed=0)
        assert len(picks) == 600  # the cost of an iteration does not grow with the pool
        is_newest = picks >= sizes[0]
        assert is_newest.sum() == 300  # half from the newest iteration, half from the others
        for part in (is_newest, ~is_newest):
            counts = Counter(labels[i] for i in picks[part])
            assert set(counts.values()) == {100}  # classes balanced within each part
    assert (draw_budget([100, 40], None, 50, 0.5, seed=3) == draw_budget([100, 40], None, 50, 0.5, seed=3)).all()
    assert not (draw_budget([100, 40], None, 50, 0.5, seed=3) == draw_budget([100, 40], None, 50, 0.5, seed=4)).all()
    only = draw_budget([40], None, 30, 0.5, seed=0)  # a single dataset gives the whole budget, without repeats
    assert len(only) == 30 and len(set(only.tolist())) == 30


def test_the_vision_head_trains_the_tower_and_leaves_a_plain_checkpoint(tmp_path, tiny_model, reflections):
    from safetensors.torch import load_file

    plain, headed = tmp_path / "plain", tmp_path / "headed"
    common = ("--num_train_epochs", "1", "--save_strategy", "no", "--seed", "3")
    train(*_args(_base_argv(tiny_model, reflections, plain, *common)))
    metrics = train(*_args(_base_argv(tiny_model, reflections, headed, *common, "--vision_head_weight", "2")))
    assert metrics["vision_head_weight"] == 2.0
    a, b = load_file(plain / "model.safetensors"), load_file(headed / "model.safetensors")
    assert a.keys() == b.keys()  # the head is not saved: the checkpoint is the plain model
    tower = [k for k in a if "vision_model" in k]
    assert tower and any(not torch.equal(a[k], b[k]) for k in tower)  # the head's loss reached the tower
    from vlmrl.data import meta_path
    from vlmrl.training import MANIFEST

    assert json.loads(meta_path(headed, MANIFEST).read_text())["vision_head_weight"] == 2.0
    torch.manual_seed(12345)  # whatever state the global generator is in, the head starts from the run's seed
    again = tmp_path / "again"
    train(*_args(_base_argv(tiny_model, reflections, again, *common, "--vision_head_weight", "2")))
    c = load_file(again / "model.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b)  # one command, one result


def test_the_vision_head_skips_rehearsal_questions(tmp_path, tiny_model, reflections):
    # Rehearsal mixes perception questions, whose answers name no action, into the training set.
    metrics = train(*_args(_base_argv(tiny_model, reflections, tmp_path / "o", "--num_train_epochs", "1",
                                      "--save_strategy", "no", "--rehearsal_share", "0.25",
                                      "--vision_head_weight", "1")))
    assert metrics["rehearsal_samples"] > 0 and metrics["vision_head_weight"] == 1.0


def test_the_vision_head_on_the_connector_trains_the_image_tokens_the_language_model_reads(tmp_path, tiny_model,
                                                                                          reflections):
    from safetensors.torch import load_file

    from vlmrl.data import meta_path
    from vlmrl.training import MANIFEST

    plain, on_tower, on_connector = tmp_path / "plain", tmp_path / "tower", tmp_path / "connector"
    common = ("--num_train_epochs", "1", "--save_strategy", "no", "--seed", "3")
    train(*_args(_base_argv(tiny_model, reflections, plain, *common)))
    train(*_args(_base_argv(tiny_model, reflections, on_tower, *common, "--vision_head_weight", "2")))
    metrics = train(*_args(_base_argv(tiny_model, reflections, on_connector, *common, "--vision_head_weight", "2",
                                      "--vision_head_at", "connector")))
    assert metrics["vision_head_at"] == "connector"
    a, b, c = (load_file(d / "model.safetensors") for d in (plain, on_tower, on_connector))
    assert a.keys() == c.keys()  # the head is not saved
    connector = [k for k in a if "connector" in k]
    assert connector and any(not torch.equal(a[k], c[k]) for k in connector)
    assert any(not torch.equal(b[k], c[k]) for k in connector)  # another head than the tower's
    record = json.loads(meta_path(on_connector, MANIFEST).read_text())
    assert record["vision_head_at"] == "connector"
    assert "vision_head_at" not in json.loads(meta_path(on_tower, MANIFEST).read_text())  # older records stay valid


def test_the_vision_head_reads_the_action_named_in_each_answer(tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmrl.vision_head import HEAD_NAME, VisionActionHead, action_token_classes

    processor = AutoProcessor.from_pretrained(tiny_model)
    game = get_game("ALE/Pong-v5")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    head = VisionActionHead(model, processor.tokenizer, game, 1.0)
    assert hasattr(model, HEAD_NAME)
    table = action_token_classes(processor.tokenizer, game)
    token = {index: tok for tok, index in table.items()}
    left, noop = game.actions.index("LEFT"), game.actions.index("NOOP")
    brace = processor.tokenizer("{", add_special_tokens=False)["input_ids"][0]
    labels = torch.tensor([[-100, -100, brace, token[left], token[noop]],
                           [-100, token[noop], brace, -100, -100]])
    assert head.targets(labels).tolist() == [left, noop]  # the first action token after the prompt
    # A rehearsal sample's answer names no action: the head skips that row, and a batch of them alone
    # gives no loss; a run in which no answer ever named one is refused.
    skipped = head.targets(torch.tensor([[-100, brace], [-100, token[noop]]]))
    assert skipped.tolist() == [-100, noop]
    features = torch.randn(2, 16, model.model.vision_model.config.hidden_size, requires_grad=True)
    head._features = features
    assert head.loss(model, skipped) > 0
    head._features = features
    assert float(head.loss(model, torch.tensor([-100, -100])).detach()) == 0.0
    head.check_used()
    fresh = VisionActionHead(AutoModelForImageTextToText.from_pretrained(tiny_model), processor.tokenizer, game, 1.0)
    fresh.check_used()  # no batch trained in this process (a run resumed at its last step): nothing to refuse
    fresh = VisionActionHead(AutoModelForImageTextToText.from_pretrained(tiny_model), processor.tokenizer, game, 1.0)
    fresh.targets(torch.tensor([[-100, brace]]))
    with pytest.raises(ValueError, match="no training answer named an action"):
        fresh.check_used()
    head.detach(model)
    assert not hasattr(model, HEAD_NAME)


def test_action_names_sharing_a_first_token_are_refused():
    from vlmrl.vision_head import action_token_classes

    class Letters:  # a tokenizer that spells names letter by letter: RIGHT and RIGHTFIRE both begin with R
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    class TwoActions:
        actions = ["RIGHT", "RIGHTFIRE"]

    with pytest.raises(ValueError, match="begin with the same token"):
        action_token_classes(Letters(), TwoActions())


def test_the_vision_head_is_refused_with_lora_or_a_negative_weight(tmp_path, tiny_model, reflections):
    for extra, message in ((["--vision_head_weight", "1", "--use_peft", "true"], "LoRA leaves frozen"),
                           (["--vision_head_weight", "-1"], "must be >= 0"),
                           (["--vision_head_weight", "1", "--vision_head_at", "text"],
                            "must be one of tower, connector")):
        result = _run_train(*_base_argv(tiny_model, reflections, tmp_path / "o", *extra))
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "o").exists()


def test_a_phase_weight_draws_that_phase_more_often_within_each_class():
    import numpy as np

    from vlmrl.training import draw_budget

    classes = ["stay"] * 60 + ["up"] * 40
    toward = np.array([i % 4 == 0 for i in range(100)])  # a quarter of each class's rows
    weights = np.where(toward, 3.0, 1.0)
    plain = draw_budget([100], classes, 4000, 0.5, seed=0)
    weighted = draw_budget([100], classes, 4000, 0.5, seed=0, weights=weights)
    assert len(weighted) == 4000
    for picks in (plain, weighted):  # the classes stay balanced
        assert sum(classes[i] == "up" for i in picks) == 2000
    # A toward row is three times as likely as another: half the draws (1 part in 4, weighed 3 against 3 x 1).
    assert abs(toward[plain].mean() - 0.25) < 0.04
    assert abs(toward[weighted].mean() - 0.5) < 0.04


def test_phase_weights_are_read_from_the_answer_keys_and_checked_against_the_game():
    from vlmrl.training import parse_phase_weights, phase_weights_of_rows

    pong, breakout = get_game("ALE/Pong-v5"), get_game("ALE/Breakout-v5")
    assert parse_phase_weights("toward=2", pong) == {"toward": 2.0}
    assert parse_phase_weights("down=2, none=0.5", breakout) == {"down": 2.0, "none": 0.5}
    answers = [json.dumps({"horizontal": "toward"}), json.dumps({"horizontal": "away"}),
               json.dumps({"horizontal": None}), None]
    assert phase_weights_of_rows(answers, pong, {"toward": 2.0, "none": 0.5}).tolist() == [2.0, 1.0, 0.5, 0.5]
    assert breakout.phase_of_answers({"vertical": "down", "horizontal": "left"}) == "down"
    for raw, message in (("sideways=2", "no phase 'sideways'"), ("toward", "takes phase=weight pairs"),
                         ("toward=0", "must be a number > 0"), ("toward=nan", "got 'toward=nan'"),
                         ("toward=2,toward=3", "given twice")):
        with pytest.raises(ValueError, match=message):
            parse_phase_weights(raw, pong)
    with pytest.raises(ValueError, match="give both"):
        TrainScriptArguments(reflections=["x"], phase_weight="toward=2")


def test_training_with_a_phase_weight_records_it(tmp_path, tiny_model, reflections):
    out = tmp_path / "ckpt"
    metrics = train(*_args(_base_argv(tiny_model, reflections, out, "--num_train_epochs", "1", "--save_strategy",
                                      "no", "--sample-budget", "16", "--phase-weight", "toward=4")))
    assert metrics["samples"] == 16
    from vlmrl.data import meta_path
    from vlmrl.training import MANIFEST

    assert json.loads(meta_path(out, MANIFEST).read_text())["phase_weight"] == "toward=4"
    result = _run_train(*_base_argv(tiny_model, reflections, tmp_path / "o", "--phase-weight", "toward=2"))
    assert result.returncode == 2 and "give both" in result.stderr, result.stderr[-2000:]
