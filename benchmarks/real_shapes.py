"""Memory and speed of the SmolVLM recipe at the published shapes (random weights), on this machine's device.

    python benchmarks/real_shapes.py --size 256M                  # build in memory, measure every phase
    python benchmarks/real_shapes.py --model data/models/smolvlm-256m-random --phases act,generate
    python benchmarks/real_shapes.py --size 2B --dtype bfloat16 --phases act,generate --batch-sizes 1
    python benchmarks/real_shapes.py --size 2B --model-memory     # the arithmetic model for A100 / H100 only
    python benchmarks/real_shapes.py --size 256M --reduced        # tiny widths, same tile and arithmetic (tests)

Phases: ``act`` (constrained decoding over the 6 Pong action names, multi-token path), ``generate`` (free
generation of N tokens), ``reflect`` (the self-reflector's generation, two frames a step), ``train``
(full fine-tune, AdamW) and ``lora`` (peft LoRA on train.py's targets). Peak memory per phase is the peak
RSS sampled while it ran on CPU (every 5 ms; the lifetime maximum is reported too), or
``torch.cuda.max_memory_allocated`` on CUDA. Prints ONE JSON object on stdout.
"""

# ruff: noqa: I001  (vlmrl is imported before torch on purpose)
from __future__ import annotations

import vlmrl  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from vlmrl.real_shapes import PONG_ACTIONS, RECIPE_TILE, get_shape, memory_model, reduced_shape

PHASES = ("act", "generate", "reflect", "train", "lora")
GAME_ID = "ALE/Pong-v5"


class PeakMemory:
    """Peak memory while the block runs: sampled RSS on CPU, the allocator's peak on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self.rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            # Hand memory freed by the previous phase back to the OS first, or it would count in this one's peak.
            gc.collect()
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
            self.peak_bytes = self.rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self.rss())

    @property
    def gib(self) -> float:
        return round(self.peak_bytes / 1024**3, 3)


class Times(list):
    """Wall seconds per call, with the process's CPU seconds per call beside them (``cpu``): on a shared CPU
    the wall time also measures the neighbours, the CPU time much less so."""

    cpu: list[float]


def timed(fn, repeats: int, warmup: int, device: torch.device) -> Times:
    """Wall (and CPU) seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = Times()
    times.cpu = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        times.cpu.append(time.process_time() - cpu)
    return times


def timing(times: Times) -> dict:
    """The row's timing fields: median wall and CPU seconds per step, and every wall time."""
    return {"s_per_step": round(statistics.median(times), 3), "cpu_s_per_step": round(statistics.median(times.cpu), 3),
            "times": [round(t, 3) for t in times], "load_average": round(os.getloadavg()[0], 2)}


def pong_frames(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` consecutive (frame, ram) pairs of a Pong game under random play (ball in play after ~60 steps)."""
    from vlmrl.env import make_env, ram_of

    env = make_env(GAME_ID)
    frame, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(60):
        frame, *_ = env.step(int(rng.integers(env.action_space.n)))
    out = []
    for _ in range(n):
        out.append((frame, ram_of(env)))
        frame, *_ = env.step(int(rng.integers(env.action_space.n)))
    env.close()
    return out


def build(args, device: torch.device, dtype: torch.dtype):
    """(model, processor, shape, where): loaded from --model, or built in memory from --size."""
    from vlmrl.real_shapes import SHAPES_FILE, RealShape, build_model, build_processor, build_tokenizer

    if args.model:
        from vlmrl.models import load_processor, load_vlm
        from vlmrl.observation import ObservationConfig

        record = json.loads((Path(args.model) / SHAPES_FILE).read_text())
        shape = RealShape(**record["shape"])
        processor = load_processor(args.model, ObservationConfig(frames=1, encoding="rgb", image_size=args.tile))
        model = load_vlm(args.model, device=device, dtype=dtype)
        return model, processor, shape
    shape = reduced_shape(args.size) if args.reduced else get_shape(args.size)
    tokenizer = build_tokenizer()
    processor = build_processor(shape, tokenizer, args.tile)
    model = build_model(shape, tokenizer, dtype=dtype).to(device)
    return model, processor, shape


def observation_config(tile: int):
    from vlmrl.observation import ObservationConfig

    return ObservationConfig(frames=1, encoding="rgb", crop=False, image_size=tile)


def measure_acting(model, processor, frames, args, device, decode: str) -> list[dict]:
    """Seconds per act() call (one env step for the whole batch) at each batch size."""
    from vlmrl.games import get_game
    from vlmrl.policies import Observation
    from vlmrl.policies.vlm import VLMPolicy

    policy = VLMPolicy(model, processor, get_game(GAME_ID), PONG_ACTIONS, observation_config(args.tile),
                       decode=decode,
                       max_new_tokens=args.generate_tokens, min_new_tokens=args.generate_tokens)
    rows = []
    for batch in args.batch_sizes:
        observations = [Observation([frames[i % len(frames)][0]], frames[i % len(frames)][1]) for i in range(batch)]
        with PeakMemory(device) as peak:
            times = timed(lambda obs=observations: policy.act(obs), args.repeats, args.warmup, device)
        row = {"phase": "act" if decode == "constrained" else "generate", "batch": batch, **timing(times),
               "peak_gib": peak.gib}
        if decode == "constrained":
            row["multi_token_path"] = not policy._single_token
            row["rows_per_forward"] = batch * len(PONG_ACTIONS)
        else:
            row["new_tokens"] = args.generate_tokens
        rows.append(row)
    return rows


def measure_reflection(model, processor, frames, args, device) -> list[dict]:
    """Seconds per reflector call (a batch of steps, two frames each) with the self-reflector's code."""
    from vlmrl.games import get_game
    from vlmrl.reflectors import ModelReflector, ReflectionItem

    # The reflector's own generation and parsing on the model already in memory (its constructor would load
    # a second copy from disk).
    reflector = ModelReflector.__new__(ModelReflector)
    reflector.name, reflector.game, reflector.actions = "self", get_game(GAME_ID), PONG_ACTIONS
    reflector.observation, reflector.model, reflector.processor = observation_config(args.tile), model, processor
    reflector.max_new_tokens, reflector.retries, reflector.invalid = args.reflect_tokens, 0, 0
    reflector.outcome_views, reflector.later_views = 0, 0  # no hindsight: the step and the next frame
    rows = []
    for batch in args.reflect_batch_sizes:
        items = [
            ReflectionItem(frames=[frames[i % len(frames)][0]], next_frames=[frames[(i + 1) % len(frames)][0]],
                           ram=frames[i % len(frames)][1], prev_ram=None, action_taken="LEFTFIRE",
                           reasoning="the ball is above my paddle", reward=0.0, return_to_go=-0.5)
            for i in range(batch)
        ]
        with PeakMemory(device) as peak:
            times = timed(lambda it=items: reflector._generate(it, sample=False), args.repeats, args.warmup, device)
        rows.append({"phase": "reflect", "batch": batch, **timing(times), "new_tokens_max": args.reflect_tokens,
                     "peak_gib": peak.gib})
    return rows


def training_batch(processor, frames, batch: int, device) -> dict:
    """One batch as TRL would make it: acting prompt + frame + the answer, loss on the answer only."""
    from vlmrl.games import get_game
    from vlmrl.observation import encode_observation
    from vlmrl.prompts import acting_messages, format_answer

    obs = observation_config(processor.image_processor.size["longest_edge"])
    prompt = processor.apply_chat_template(acting_messages(get_game(GAME_ID), PONG_ACTIONS, 1, "rgb"),
                                           add_generation_prompt=True)
    answer = format_answer("RIGHTFIRE", "the ball is above my paddle and moving up, so I move up to meet it")
    texts = [prompt + " " + answer + "<end_of_utterance>"] * batch
    images = [encode_observation([frames[i % len(frames)][0]], obs, get_game(GAME_ID)) for i in range(batch)]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = inputs["input_ids"].clone()
    prompt_len = len(processor(text=[prompt], images=[images[0]], return_tensors="pt")["input_ids"][0])
    labels[:, :prompt_len] = -100
    inputs["labels"] = labels
    return {k: v.to(device) for k, v in inputs.items()}


def measure_training(model, processor, frames, args, device, lora: bool) -> dict:
    """Samples/s over a few AdamW steps of a full fine-tune (or LoRA) at the recipe's batch."""
    from vlmrl.training import IDEFICS3_LORA_TARGETS

    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=IDEFICS3_LORA_TARGETS))
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5)
    batch = training_batch(processor, frames, args.train_batch, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakMemory(device) as peak:
        times = timed(step, args.train_steps, 1, device)
    s = statistics.median(times)
    row = {"phase": "lora" if lora else "train", "batch": args.train_batch,
           "sequence": int(batch["input_ids"].shape[1]),
           **timing(times), "samples_per_s": round(args.train_batch / s, 3),
           "trainable_parameters": sum(p.numel() for p in params),
           "gradient_checkpointing": args.gradient_checkpointing, "dtype": str(next(model.parameters()).dtype),
           "peak_gib": peak.gib}
    if lora:
        model.unload()  # back to the plain model, adapters removed
    model.eval()
    return row


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", default="256M", help="published shapes to build: 256M, 500M or 2B")
    parser.add_argument("--model", default=None,
                        help="a folder built by `python -m vlmrl.real_shapes` (instead of building in memory)")
    parser.add_argument("--reduced", action="store_true",
                        help="narrow, one-layer towers with the size's tile, patch and scale (fast; for tests)")
    parser.add_argument("--tile", type=int, default=RECIPE_TILE, help="image side per frame (one tile, no split)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weights' dtype (default: float32 on CPU as train.py uses there, bfloat16 on CUDA)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {','.join(PHASES)}")
    parser.add_argument("--batch-sizes", default="1,4", help="acting batch sizes (envs stepped together)")
    parser.add_argument("--reflect-batch-sizes", default="1,4", help="reflection batch sizes")
    parser.add_argument("--generate-tokens", type=int, default=16, help="tokens generated per answer (exactly)")
    parser.add_argument("--reflect-tokens", type=int, default=16, help="reflection generation budget")
    parser.add_argument("--train-batch", type=int, default=4, help="training batch (the recipe's)")
    parser.add_argument("--train-steps", type=int, default=2, help="timed optimizer steps (after one warm-up step)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="train with gradient checkpointing")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per acting/reflection measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before those")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--model-memory", action="store_true",
                        help="print only the arithmetic GPU memory model (A100 40 GB, H100 80 GB) for --size")
    args = parser.parse_args(argv)
    try:
        get_shape(args.size)
        args.phases = [p for p in args.phases.split(",") if p]
        unknown = set(args.phases) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown phases {sorted(unknown)}: use {','.join(PHASES)}")
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        args.reflect_batch_sizes = [int(b) for b in args.reflect_batch_sizes.split(",") if b]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.model_memory:
        result = memory_model(get_shape(args.size), tile=args.tile)
        print(json.dumps(result))
        return result
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    start = time.perf_counter()
    with PeakMemory(device) as load_peak:
        model, processor, shape = build(args, device, dtype)
    frames = pong_frames(max(max(args.batch_sizes), max(args.reflect_batch_sizes), args.train_batch) + 1)
    result = {
        "size": shape.name, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters()),
        "image_tokens_per_frame": shape.tile_tokens(args.tile), "tile": args.tile,
        "action_tokens": {a: len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in PONG_ACTIONS},
        "load_or_build": {"seconds": round(time.perf_counter() - start, 1), "peak_gib": load_peak.gib},
        "load_average": round(os.getloadavg()[0], 2), "rows": [],
    }
    if "act" in args.phases:
        result["rows"] += measure_acting(model, processor, frames, args, device, "constrained")
    if "generate" in args.phases:
        result["rows"] += measure_acting(model, processor, frames, args, device, "generate")
    if "reflect" in args.phases:
        result["rows"] += measure_reflection(model, processor, frames, args, device)
    if "train" in args.phases:
        result["rows"].append(measure_training(model, processor, frames, args, device, lora=False))
    if "lora" in args.phases:
        result["rows"].append(measure_training(model, processor, frames, args, device, lora=True))
    if device.type == "cpu":
        result["lifetime_max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
