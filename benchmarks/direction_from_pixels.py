"""Do the model's pixels show which way the ball moves? One JSON object on stdout.

    python benchmarks/direction_from_pixels.py --model data/models/tiny-smolvlm

The tiny model answers "is the ball moving up or down?" right 0.99 of the time after its pre-training,
but "toward you or away?" only 0.73 (always "toward": 0.69). This asks whether the observation holds the
answer at all: a small CNN, trained from scratch on the same motion images the model sees (its recorded
observation: crop, encoding, size, resampling), predicts each direction from pixels alone. Frames come from
``--data-dir``'s recorded episodes (``benchmarks/supervised_ceiling.py`` collects them), training and test
states from different episodes; labels from the RAM (``Pong.scene``, the probe's own answer key).

``--questions action`` asks instead for the teacher's own decision (up, down or stay), scored by ball phase:
can the pixels, through this learner, give what the loop imitates? ``--learner tower-frozen --model
<checkpoint>`` then says how much of it a fine-tuned checkpoint's vision tower holds (README, *What the tower
learns in the loop*).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vlmrl  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from vlmrl.cli import ArgumentParser, run
from vlmrl.games import get_game
from vlmrl.observation import ObservationConfig, encode_batch, recorded_observation
from vlmrl.perception import pool_patches

GAME = get_game("ALE/Pong-v5")
TEACHER = GAME.make_oracle()
# The two directions (the probe's answer key), and the teacher's own decision ("action": the class of the
# action the two-step teacher takes): can the pixels alone, through this learner, give the decision the loop
# imitates? A diagnosis only; no build is taught actions.
QUESTIONS = {"vertical": ("up", "down"), "horizontal": ("toward", "away"), "action": ("up", "down", "stay")}


def images_and_labels(episodes: Path, observation: ObservationConfig
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Every step with a previous step: its observation (N, 3, size, size) uint8, each question's label
    index (-1 where the answer key has none) and the step's ball phase."""
    from datasets import load_dataset

    ds = load_dataset(str(episodes), split="train")
    ids, steps = np.asarray(ds["episode_id"]), np.asarray(ds["step"])
    row = {(int(e), int(s)): r for r, (e, s) in enumerate(zip(ids, steps, strict=True))}
    pairs = [(row[(int(e), int(s) - 1)], r) for r, (e, s) in enumerate(zip(ids, steps, strict=True))
             if (int(e), int(s) - 1) in row]
    frames = {}

    def frame(r: int) -> np.ndarray:
        if r not in frames:
            frames[r] = np.asarray(ds[r]["frame"].convert("RGB"))
        return frames[r]

    rams = np.asarray(ds["ram"], np.uint8)
    images, labels, phases = [], {q: [] for q in QUESTIONS}, []
    for start in range(0, len(pairs), 256):
        chunk = pairs[start:start + 256]
        images.append(encode_batch([[frame(p), frame(r)] for p, r in chunk], observation, GAME,
                                   channels_first=True)[:, -1])
        for p, r in chunk:
            scene = GAME.scene(rams[r], rams[p], frame(r))
            answers = {q: getattr(scene, q) for q in QUESTIONS if q != "action"}
            answers["action"] = TEACHER.decide(rams[r], rams[p]).action_class
            for q, options in QUESTIONS.items():
                labels[q].append(options.index(answers[q]) if answers[q] in options else -1)
            phases.append(GAME.phase(rams[r], rams[p]))
        frames = {k: v for k, v in frames.items() if k >= chunk[-1][1] - 1}
    return np.concatenate(images), {q: np.asarray(v) for q, v in labels.items()}, np.asarray(phases)


def cnn(classes: int = 2) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # keeps 1-pixel detail
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, classes))


class VisionTowerHead(torch.nn.Module):
    """The tiny VLM's own vision tower (Idefics3's ViT: linear patch embedding, position embedding, encoder)
    with a linear answer on its pooled patch features, as the build's vision warm-up: can this tower learn the direction
    when taught it directly? ``weights_from`` starts it from a built model's tower; ``frozen`` keeps that
    tower as it is and trains only the answer (a linear probe of what the tower already extracts)."""

    def __init__(self, model: str, weights_from: bool, frozen: bool, classes: int = 2,
                 shape: dict | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForImageTextToText
        from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer

        if weights_from:
            self.tower = AutoModelForImageTextToText.from_pretrained(model).model.vision_model
        else:
            config = AutoConfig.from_pretrained(model).vision_config
            for key, value in (shape or {}).items():
                setattr(config, key, value)
            self.tower = Idefics3VisionTransformer(config)
        self.tower.requires_grad_(not frozen)
        hidden = self.tower.config.hidden_size
        self.head = torch.nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pool_patches(self.tower(pixel_values=x).last_hidden_state))


LEARNERS = ("cnn", "tower", "tower-pretrained", "tower-frozen")


def learner(name: str, model: str, classes: int = 2, shape: dict | None = None) -> torch.nn.Module:
    if name == "cnn":
        return cnn(classes)
    return VisionTowerHead(model, weights_from=name != "tower", frozen=name == "tower-frozen", classes=classes,
                           shape=shape)


TOWER_KEYS = ("patch_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def tower_shape(text: str) -> dict:
    """``patch_size=8,num_hidden_layers=4`` → a dict of the vision config's keys (whole numbers)."""
    shape = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in TOWER_KEYS or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--tower-shape takes key=whole number pairs of {', '.join(TOWER_KEYS)}, got {item!r}")
        shape[key] = int(value)
    return shape


def fit_and_score(train_x, train_y, test_x, test_y, epochs: int, seed: int, name: str = "cnn",
                  model: str = "", lr: float = 2e-3, classes: int = 2, test_phases: np.ndarray | None = None,
                  shape: dict | None = None) -> dict:
    """Train on the labelled training states, score on the labelled test states (and by ball phase when
    ``test_phases`` is given)."""
    torch.manual_seed(seed)
    keep, keep_test = train_y >= 0, test_y >= 0
    x, y = torch.from_numpy(train_x[keep]), torch.from_numpy(train_y[keep])
    net = learner(name, model, classes, shape)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[idx].float() / 255), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        tx = torch.from_numpy(test_x[keep_test])
        pred = torch.cat([net(b.float() / 255).argmax(-1) for b in tx.split(256)]).numpy()
    truth = test_y[keep_test]
    report = {"accuracy": round(float(np.mean(pred == truth)), 4),
              "majority": round(float(max(np.mean(truth == c) for c in range(classes))), 4),
              "train_states": int(keep.sum()), "test_states": int(keep_test.sum())}
    if test_phases is not None:
        phases = test_phases[keep_test]
        report["by_phase"] = {ph: round(float(np.mean(pred[phases == ph] == truth[phases == ph])), 4)
                              for ph in GAME.phases if (phases == ph).any()}
    return report


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/models/tiny-smolvlm", help="whose recorded observation to use")
    parser.add_argument("--data-dir", default="data/ceiling/tiny-smolvlm",
                        help="recorded episodes: <dir>/train-<n>/episodes and <dir>/test-<n>/episodes")
    parser.add_argument("--train-episodes", type=int, default=24)
    parser.add_argument("--test-episodes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="passes of the learner over the training states")
    parser.add_argument("--learner", choices=LEARNERS, default="cnn",
                        help="cnn: a small CNN from scratch; tower: the model's own vision tower shape, random init, "
                             "with a linear answer; tower-pretrained: the built model's tower, fine-tuned; "
                             "tower-frozen: the built model's tower kept as it is (a linear probe of its features)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--questions", default="vertical,horizontal",
                        help=f"what to learn, some of {','.join(QUESTIONS)} (action: the teacher's decision, "
                             "scored by ball phase too)")
    parser.add_argument("--tower-shape", default="",
                        help="with --learner tower: change the tower's shape from the model's, e.g. "
                             f"patch_size=8,num_hidden_layers=4 (keys: {', '.join(TOWER_KEYS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    questions = [q for q in args.questions.split(",") if q]
    if not questions or set(questions) - set(QUESTIONS):
        parser.error(f"--questions must name some of {','.join(QUESTIONS)}, got {args.questions!r}")
    if args.epochs < 1 or args.lr <= 0:
        parser.error("--epochs must be at least 1 and --lr positive")
    try:
        shape = tower_shape(args.tower_shape)
    except ValueError as err:
        parser.error(str(err))
    if shape and args.learner != "tower":
        parser.error("--tower-shape changes a random-init tower: use it with --learner tower")
    parts = {name: Path(args.data_dir) / f"{name}-{n}" / "episodes"
             for name, n in (("train", args.train_episodes), ("test", args.test_episodes))}
    for path in parts.values():
        if not (path / ".vlmrl" / "summary.json").exists():
            parser.error(f"{path} holds no recorded episodes: run benchmarks/supervised_ceiling.py first")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    observation = ObservationConfig(**recorded_observation(args.model))
    (train_x, train_y, _), (test_x, test_y, test_phases) = (images_and_labels(p, observation)
                                                            for p in parts.values())
    print(f"{len(train_x)} training and {len(test_x)} test images in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    report = {"model": args.model, "observation": observation.__dict__, "epochs": args.epochs,
              "learner": args.learner, "lr": args.lr, "tower_shape": shape}
    for q in questions:
        report[q] = fit_and_score(train_x, train_y[q], test_x, test_y[q], args.epochs, args.seed,
                                  args.learner, args.model, args.lr, len(QUESTIONS[q]),
                                  test_phases if q == "action" else None, shape)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    run(main)
