"""Training throughput: vlmrl's train() against a plain SFTTrainer with default arguments, same data.

Each side runs in its own process so its peak memory (max RSS) is its own.

    python benchmarks/train_throughput.py [--samples 512] [--epochs 1]

Prints one JSON object with samples/s and peak memory of both, and speedup_vs_trl (ours / plain).
"""

# ruff: noqa: I001  (vlmrl is imported before torch on purpose)
from __future__ import annotations

import vlmrl  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlmrl.cli import ArgumentParser, run

MOTION = dict(frames=2, encoding="motion", crop=True, image_size=128)


def make_data(model: str, root: Path, samples: int) -> str:
    """Oracle reflections on the tiny model's own play: the data every iteration trains on."""
    from vlmrl.collection import collect
    from vlmrl.configs import CollectArguments, ReflectArguments
    from vlmrl.reflection import reflect

    episodes = max(1, samples // 200)
    collect(CollectArguments(model=model, episodes=episodes, max_steps=-(-samples // episodes), num_envs=episodes,
                             output_dir=str(root / "episodes"), progress=False, **MOTION))
    reflect(ReflectArguments(episodes=str(root / "episodes"), reflector="oracle", reflect_on="all",
                             reflection_rate=1.0, max_reflections=samples, output_dir=str(root / "reflections"),
                             progress=False, **MOTION))
    return str(root / "reflections")


def run_ours(model: str, data: str, out: str, epochs: float, recipe: str) -> dict:
    from trl import ModelConfig, SFTConfig

    from vlmrl.cli import parse
    from vlmrl.training import TrainScriptArguments, cpu_defaults, train

    argv = ["--config", recipe, "--model_name_or_path", model, "--reflections", data, "--output_dir", out,
            "--num_train_epochs", str(epochs), "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]
    metrics = train(*parse((TrainScriptArguments, SFTConfig, ModelConfig), argv=argv, defaults=cpu_defaults()))
    return {"samples_per_s": metrics["samples_per_s"], "batch_size": None}


def run_plain(model: str, data: str, out: str, epochs: float) -> dict:
    """TRL as a user would call it first: SFTConfig defaults, only what a CPU needs to run at all."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from vlmrl.data import load_any

    dataset = load_any(data).select_columns(["prompt", "completion", "image"])
    config = SFTConfig(output_dir=out, num_train_epochs=epochs, use_cpu=True, bf16=False, report_to="none",
                       save_strategy="no", disable_tqdm=True)
    trainer = SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(model), args=config,
                         train_dataset=dataset, processing_class=AutoProcessor.from_pretrained(model))
    result = trainer.train()
    return {"samples_per_s": result.metrics["train_samples_per_second"],
            "batch_size": config.per_device_train_batch_size}


def child(which: str, model: str, data: str, epochs: float, recipe: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        figures = run_ours(model, data, out, epochs, recipe) if which == "ours" else run_plain(model, data, out,
                                                                                                  epochs)
        figures["wall_s"] = time.perf_counter() - start
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(figures))


def measure(which: str, model: str, data: str, epochs: float, recipe: str) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--model", model, "--data", data, "--epochs", str(epochs),
           "--recipe", recipe]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{which} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="data/models/tiny-smolvlm", help="tiny model (built random-init if absent)")
    parser.add_argument("--samples", type=int, default=512, help="reflections trained on")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs each side trains")
    parser.add_argument("--recipe", default="recipes/tiny-smolvlm/pong/train.yaml", help="our training recipe")
    parser.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.data, args.epochs, args.recipe)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from collect_throughput import ensure_model

    model = ensure_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(model, Path(tmp), args.samples)
        ours = measure("ours", model, data, args.epochs, args.recipe)
        plain = measure("plain", model, data, args.epochs, args.recipe)
    print(json.dumps({
        "samples": args.samples,
        "epochs": args.epochs,
        "load_average_1m": os.getloadavg()[0],
        "ours_samples_per_s": ours["samples_per_s"],
        "plain_trl_samples_per_s": plain["samples_per_s"],
        "plain_trl_batch_size": plain["batch_size"],
        "speedup_vs_trl": ours["samples_per_s"] / plain["samples_per_s"],
        "ours_peak_rss_mib": round(ours["peak_rss_mib"], 1),
        "plain_trl_peak_rss_mib": round(plain["peak_rss_mib"], 1),
    }))


if __name__ == "__main__":
    run(main)
