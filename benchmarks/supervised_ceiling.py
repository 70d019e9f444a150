"""Is the loop's limit the learner, the data or the teacher? One JSON object on stdout.

    python benchmarks/supervised_ceiling.py --model data/models/tiny-smolvlm --epochs 3
    python benchmarks/supervised_ceiling.py --model data/models/tiny-smolvlm-160 --epochs 3

On one large fixed set of oracle labels from the states a model visits while it learns (the tiny
recipe's collection: the model plays, the oracle takes half the steps, DAgger's mixture), it
measures held-out agreement with the oracle, overall and split by where the ball is (toward / away /
none), for:

- ``ram_exact``: a small MLP on the exact RAM positions of both frames (ball x, y, paddle y, now and
  before): how much of the teacher's decision the two-frame observation determines at all;
- ``ram_jitter1``: the same with each frame's positions off by up to ±1 unit, independently (about
  what a 128-pixel observation of the 160-pixel playfield resolves);
- ``model``: the VLM itself, fine-tuned on the same labels with the project's trainer
  (``vlmrl.training.train``), scored on the held-out states after each epoch.

Train and test states come from different episodes (different seeds). The data is cached under
``--data-dir`` per collecting model, so a second model variant reuses it only when it saw the same
collection (same ``--collect-model``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import vlmrl  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from vlmrl.cli import ArgumentParser, run
from vlmrl.games import get_game
from vlmrl.games.base import decide_batch
from vlmrl.games.pong import Pong, PongOracle, parse_pong_ram
from vlmrl.results import agreement_by_phase

GAME = get_game("ALE/Pong-v5")


def collect_states(model: str, out: Path, episodes: int, seed: int, max_steps: int = 500) -> None:
    """The tiny recipe's collection (teacher mix 0.5): ``model`` plays, the oracle takes half the steps."""
    from vlmrl.collection import collect
    from vlmrl.configs import CollectArguments

    collect(CollectArguments(model=model, episodes=episodes, max_steps=max_steps, num_envs=10, seed=seed,
                             teacher_mix=0.5, output_dir=str(out / "episodes"), progress=False))


def add_teacher_argument(parser) -> None:
    """``--teacher``: whose labels (validated by ``use_teacher``)."""
    parser.add_argument("--teacher", default=None,
                        help="whose labels: intercept (aim where the ball crosses your column) or a number k (aim "
                        "where it will be k steps ahead); default: the game's oracle")


def use_teacher(lookahead: str | None) -> str:
    """Makes Pong's oracle (every label here, and the reflect phase's) aim ``lookahead`` steps ahead
    ("intercept": at its column crossing); returns the cache suffix. None: the game's own oracle."""
    if lookahead is None:
        return ""
    if lookahead != "intercept" and not lookahead.isdigit():
        raise ValueError(f"--teacher must be intercept or a whole number of steps, got {lookahead!r}")
    value = None if lookahead == "intercept" else int(lookahead)
    Pong.make_oracle = lambda self: PongOracle(lookahead=value)
    return f"-teacher-{lookahead}"


def model_key(model: str) -> str:
    """The model's folder name and the start of its weights' digest: a rebuilt base (same folder, other
    weights or prompt) never reuses the rows or fine-tunes cached for the one before."""
    import hashlib

    weights = Path(model) / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:8] if weights.exists() else "nodigest"
    return f"{Path(model).name}-{digest}"


def label_states(part: Path, model: str, suffix: str = "") -> Path:
    """The oracle's label of every step, as training rows seen the way ``model`` sees (its record)."""
    from vlmrl.configs import ReflectArguments
    from vlmrl.reflection import reflect

    out = part / f"reflections-{model_key(model)}{suffix}"
    if not (out / ".vlmrl" / "summary.json").exists():
        reflect(ReflectArguments(episodes=str(part / "episodes"), reflector="oracle", reflect_on="all",
                                 reflection_rate=1.0, completion_reasoning=False, model=model,
                                 output_dir=str(out), progress=False))
    return out


def ram_pairs(episodes_dir: Path) -> tuple[np.ndarray, np.ndarray | None, list]:
    """Every step's RAM and previous RAM (None at an episode's start), in the dataset's row order."""
    from datasets import load_dataset

    ds = load_dataset(str(episodes_dir), split="train").select_columns(["episode_id", "step", "ram"])
    ids, steps, rams = np.asarray(ds["episode_id"]), np.asarray(ds["step"]), np.asarray(ds["ram"], np.uint8)
    row = {(int(e), int(s)): r for r, (e, s) in enumerate(zip(ids, steps, strict=True))}
    prev = [row.get((int(e), int(s) - 1)) for e, s in zip(ids, steps, strict=True)]
    return rams, [None if p is None else rams[p] for p in prev], list(zip(ids, steps, strict=True))


def features(rams, prevs) -> np.ndarray:
    out = []
    for ram, prev in zip(rams, prevs, strict=True):
        now = parse_pong_ram(ram)
        before = parse_pong_ram(prev if prev is not None else ram)
        out.append([now.ball_x, now.ball_y, now.player_y, before.ball_x, before.ball_y, before.player_y])
    return np.asarray(out, np.float32)


CLASSES = ("up", "down", "stay")


def oracle_classes(rams, prevs) -> np.ndarray:
    decisions = decide_batch(GAME.oracle(), list(rams), list(prevs))
    return np.array([CLASSES.index(d.action_class) for d in decisions])


MLP_SCALE = 1 / 200.0  # RAM positions (0..~200) -> inputs of order 1


def jittered(x: np.ndarray, jitter: int, rng) -> np.ndarray:
    """Positions each moved by up to ``jitter`` units (drawn from ``rng``); as they are when 0."""
    return x + rng.integers(-jitter, jitter + 1, size=x.shape) if jitter else x


def mlp_classes(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The MLP's class for each row of positions."""
    with torch.no_grad():
        return net(torch.from_numpy(x.astype(np.float32) * MLP_SCALE)).argmax(-1).numpy()


def ram_mlp(train_x, train_y, test_x, jitter: int, seed: int = 0, epochs: int = 60) -> np.ndarray:
    """Predictions of a 2x256 MLP trained on (optionally jittered) positions; jitter also at test time."""
    rng = np.random.default_rng(seed)
    net = fit_mlp(train_x, train_y, jitter, seed, epochs, rng)
    return mlp_classes(net, jittered(test_x, jitter, rng))


def fit_mlp(train_x, train_y, jitter: int = 0, seed: int = 0, epochs: int = 60, rng=None) -> torch.nn.Module:
    """A 2x256 MLP fitted to the classes of (optionally jittered) positions."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    y = torch.from_numpy(train_y)
    for _ in range(epochs):
        x = torch.from_numpy(jittered(train_x, jitter, rng).astype(np.float32) * MLP_SCALE)
        for idx in torch.randperm(len(x)).split(256):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


FIT_STATES = 4000  # training states the fine-tuned model is also scored on


def score(predicted: np.ndarray, truth: np.ndarray, phases: list[str]) -> dict:
    agrees = (predicted == truth).tolist()
    split = agreement_by_phase(agrees, phases, GAME.phases)
    return {"agreement": round(float(np.mean(agrees)), 4),
            **{f"{p}": (None if v["agreement"] is None else round(v["agreement"], 4)) for p, v in split.items()},
            "steps": len(agrees)}


def model_predictions(checkpoint: str, test_dir: Path, limit: int | None = None) -> np.ndarray:
    """The fine-tuned model's greedy class on each step of ``test_dir`` (constrained decoding, as it
    plays); the first ``limit`` steps only when given."""
    from datasets import load_dataset

    from vlmrl.models import load_processor, load_vlm
    from vlmrl.observation import ObservationConfig, recorded_observation
    from vlmrl.policies import Observation
    from vlmrl.policies.vlm import VLMPolicy

    observation = ObservationConfig(**recorded_observation(checkpoint))
    model = load_vlm(checkpoint)
    policy = VLMPolicy(model, load_processor(checkpoint, observation), GAME, GAME.actions, observation)
    ds = load_dataset(str(test_dir / "episodes"), split="train")
    row = {(int(e), int(s)): r for r, (e, s) in enumerate(zip(ds["episode_id"], ds["step"], strict=True))}
    out = []
    end = len(ds) if limit is None else min(limit, len(ds))
    for start in range(0, end, 64):
        batch = []
        for r in range(start, min(start + 64, end)):
            e, s = int(ds[r]["episode_id"]), int(ds[r]["step"])
            frames = [np.asarray(ds[row[(e, max(s - j, 0))]]["frame"].convert("RGB"))
                      for j in range(observation.frames - 1, -1, -1)]
            batch.append(Observation(frames, np.asarray(ds[r]["ram"], np.uint8)))
        picks = policy.action_logprobs(batch).argmax(-1).tolist()
        out += [CLASSES.index(GAME.action_class(GAME.actions[i])) for i in picks]
    return np.array(out)


def train_epoch(base: str, reflections: Path, out: Path, seed: int, lr: float, batch_size: int = 32,
                balance: bool = True, lora: bool = False, vision_head_weight: float = 0.0) -> dict:
    from trl import ModelConfig, SFTConfig

    from vlmrl.cli import parse
    from vlmrl.training import TrainScriptArguments, cpu_defaults, train

    script, training, model_args = parse((TrainScriptArguments, SFTConfig, ModelConfig), [
        "--model_name_or_path", base, "--reflections", str(reflections), "--output_dir", str(out),
        "--num_train_epochs", "1", "--per_device_train_batch_size", str(batch_size), "--learning_rate", str(lr),
        "--lr_scheduler_type", "constant", "--balance_actions", str(balance).lower(), "--report_to", "none",
        "--save_strategy", "no", "--seed", str(seed), "--logging_steps", "50",
        *(["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32"] if lora else []),
        *(["--vision_head_weight", str(vision_head_weight)] if vision_head_weight else [])], defaults=cpu_defaults())
    return train(script, training, model_args)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/models/tiny-smolvlm", help="the model fine-tuned on the labels")
    parser.add_argument("--collect-model", default=None, help="whose play makes the states (default: --model)")
    parser.add_argument("--data-dir", default="data/ceiling", help="cache of the labelled states")
    parser.add_argument("--train-episodes", type=int, default=40, help="500-step episodes of training states")
    parser.add_argument("--test-episodes", type=int, default=10, help="500-step episodes of held-out states")
    parser.add_argument("--epochs", type=int, default=3, help="passes of the model over the (class-balanced) labels")
    parser.add_argument("--lr", type=float, default=1e-3, help="the model's learning rate (constant)")
    parser.add_argument("--batch-size", type=int, default=32, help="the model's training batch")
    parser.add_argument("--no-balance", action="store_true",
                        help="train on the labels as they come (default: class-balanced, as the loop trains)")
    parser.add_argument("--lora", action="store_true",
                        help="fine-tune LoRA adapters (r 16, alpha 32, train.py's targets; merged after each pass) "
                        "instead of every weight")
    parser.add_argument("--vision-head-weight", type=float, default=0.0,
                        help="train.py's --vision-head-weight: a linear head on the vision tower also answers each "
                             "label, its loss times this weight added (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-model", action="store_true", help="only the RAM ceilings")
    parser.add_argument("--skip-ram", action="store_true", help="only the model (no RAM ceilings)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_teacher_argument(parser)  # the states stay the same whoever labels them
    args = parser.parse_args()
    try:
        suffix = use_teacher(args.teacher)
    except ValueError as err:
        parser.error(str(err))
    if args.vision_head_weight < 0 or (args.vision_head_weight and args.lora):
        parser.error("--vision-head-weight must be >= 0, and cannot go with --lora (which freezes the tower)")
    if args.threads:
        torch.set_num_threads(args.threads)
    collector = args.collect_model or args.model
    cache = Path(args.data_dir) / Path(collector).name
    start = time.perf_counter()
    parts = {}
    for name, episodes, seed in (("train", args.train_episodes, 500_000), ("test", args.test_episodes, 600_000)):
        part = cache / f"{name}-{episodes}"
        if not (part / "episodes" / ".vlmrl" / "summary.json").exists():
            collect_states(collector, part, episodes, seed)
        parts[name] = part
    report: dict = {"model": args.model, "lr": args.lr, "batch_size": args.batch_size, "lora": args.lora,
                    "vision_head_weight": args.vision_head_weight,
                    "balanced": not args.no_balance, "collect_model": collector,
                    "teacher": args.teacher or "the game's oracle", "data_s": round(time.perf_counter() - start, 1),
                    "load_average_1m": os.getloadavg()[0]}
    data = {}
    for name, part in parts.items():
        rams, prevs, _ = ram_pairs(part / "episodes")
        data[name] = (features(rams, prevs), oracle_classes(rams, prevs), [GAME.phase(r, p) for r, p in
                                                                           zip(rams, prevs, strict=True)])
    (train_x, train_y, train_phases), (test_x, test_y, test_phases) = data["train"], data["test"]
    report["train_states"], report["test_states"] = len(train_y), len(test_y)
    report["label_share"] = {c: round(float(np.mean(test_y == i)), 3) for i, c in enumerate(CLASSES)}
    for name, jitter in () if args.skip_ram else (("ram_exact", 0), ("ram_jitter1", 1)):
        report[name] = score(ram_mlp(train_x, train_y, test_x, jitter, args.seed), test_y, test_phases)
    if not args.skip_model:
        report["model_epochs"] = []
        current = args.model
        for epoch in range(1, args.epochs + 1):
            variant = (f"seed{args.seed}-lr{args.lr:g}-b{args.batch_size}{'-unbalanced' if args.no_balance else ''}"
                       f"{'-lora' if args.lora else ''}"
                       f"{f'-vh{args.vision_head_weight:g}' if args.vision_head_weight else ''}")
            out = cache / f"ft-{model_key(args.model)}-{variant}{suffix}" / f"epoch_{epoch}"
            t = time.perf_counter()
            if not (out / "train_metrics.json").exists():
                metrics = train_epoch(current, label_states(parts["train"], args.model, suffix), out, args.seed,
                                      args.lr, args.batch_size, not args.no_balance, args.lora,
                                      args.vision_head_weight)
            else:
                metrics = json.loads((out / "train_metrics.json").read_text())
            entry = {"epoch": epoch, "train_s": round(time.perf_counter() - t, 1), "samples": metrics["samples"],
                     "train_loss": round(metrics["train_loss"], 4)}
            entry.update(score(model_predictions(str(out), parts["test"]), test_y, test_phases))
            # The same on training states it has seen: far above held-out means too few labels,
            # level with it means the learner cannot fit them (capacity or optimisation).
            fit = model_predictions(str(out), parts["train"], limit=FIT_STATES)
            entry["train_fit"] = score(fit, train_y[:len(fit)], train_phases[:len(fit)])
            report["model_epochs"].append(entry)
            print(json.dumps(entry), flush=True, file=__import__("sys").stderr)
            current = str(out)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    run(main)
