"""The policy an iteration is evaluated as: the mean of its last checkpoints' weights.

Late in the loop the checkpoints swing from one iteration to the next (a few points of return each way
around the same level). ``average_checkpoints`` writes one model whose floating-point weights are the plain
mean of several checkpoints' (same architecture, same keys); ``make experiment AVERAGE=s:m`` evaluates
iteration k >= s as the mean of checkpoints max(s, k-m+1)..k, the earlier ones as themselves: while the
policy still improves fast the mean plays worse than its last checkpoint (over three seeds at 20,000 agent
steps, the mean of iterations 2-4 lost 2.6 points to iteration 4), so the tiny recipe starts where its learning
rate falls. Collection and training still use each iteration's own checkpoint, so the loop's data and
checkpoints are the same with or without it; only what is evaluated (and published) changes.

    iteration_<k>/policy/                 the averaged model (config, tokenizer, card from checkpoint k)
    iteration_<k>/policy/vlmrl_average.json   which checkpoints, with their weights' SHA-256
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

WEIGHTS = "model.safetensors"
RECORD = "vlmrl_average.json"
POLICY_DIR = "policy"
# Training's own state, the last evaluation's video and metrics: not part of the averaged model.
_NOT_COPIED = ("checkpoint-*", "*.gif", "train_metrics.json", ".vlmrl", WEIGHTS, RECORD)


def average_window(k: int, last: int, start: int = 1) -> list[int]:
    """The iterations whose checkpoints iteration k is evaluated as: the last ``last`` of start..k (k alone
    before ``start``)."""
    if k < 1 or last < 1 or start < 1:
        raise ValueError(f"an iteration, a window and a start >= 1, got iteration {k}, window {last}, start {start}")
    return list(range(max(start, k - last + 1), k + 1)) if k >= start else [k]


def parse_average(raw) -> tuple[int, int]:
    """AVERAGE / ``average_checkpoints``: ``"11:3"`` (from iteration 11 on, the mean of the last 3 checkpoints
    from 11 on), ``"3"`` (from iteration 1), ``"1"`` or ``"none"`` (no averaging). Returns (start, last)."""
    text = str(raw).strip()
    if text.lower() == "none" and not isinstance(raw, bool):
        return 1, 1
    start_text, _, last_text = text.rpartition(":") if ":" in text else ("1", "", text)
    try:
        start, last = int(start_text.strip()), int(last_text.strip())
    except ValueError:
        start = last = 0
    written = f"{start_text.strip()}:{last_text.strip()}"
    if isinstance(raw, bool) or start < 1 or last < 1 or f"{start}:{last}" != written:
        raise ValueError(f"expected START:COUNT (e.g. 11:3: from iteration 11 on, the mean of the last 3 "
                         f"checkpoints from 11 on), COUNT, or none; got {raw!r}")
    return start, last


def _record(sources: list[Path], note: dict | None) -> dict:
    from vlmrl.data import file_sha256

    record = dict(note or {})
    record.update(sources=[str(s) for s in sources], weights_sha256=[file_sha256(s / WEIGHTS) for s in sources])
    return record


def average_checkpoints(sources: list[str | Path], out: str | Path, note: dict | None = None) -> Path:
    """Writes ``out``: checkpoint ``sources[-1]`` with every floating-point weight replaced by the mean over
    ``sources`` (summed in float64, cast back). Written beside ``out`` first and renamed, so an interrupted run
    leaves the previous ``out`` or none; an ``out`` already made from the same weights is kept as it is.
    ``note`` (e.g. the AVERAGE that chose the sources) is kept in the record beside them."""
    import torch
    from safetensors.torch import load_file, save_file

    sources = [Path(s) for s in sources]
    out = Path(out)
    if not sources:
        raise ValueError("no checkpoint to average")
    for src in sources:
        if not (src / WEIGHTS).is_file():
            raise FileNotFoundError(f"{src / WEIGHTS} not found: every checkpoint averaged needs its weights")
    record = _record(sources, note)
    try:
        if json.loads((out / RECORD).read_text()) == record and (out / WEIGHTS).is_file():
            return out
    except (OSError, ValueError):
        pass
    states = [load_file(src / WEIGHTS) for src in sources]
    last = states[-1]
    for src, state in zip(sources, states, strict=True):
        if set(state) != set(last) or any(state[k].shape != last[k].shape or state[k].dtype != last[k].dtype
                                          for k in last):
            raise ValueError(f"{src} is not the same architecture as {sources[-1]}: its weights' names, shapes or "
                             "types differ, so they cannot be averaged")
    mean = {}
    for name, tensor in last.items():
        if tensor.is_floating_point():
            total = torch.zeros(tensor.shape, dtype=torch.float64)
            for state in states:
                total += state[name].to(torch.float64)
            mean[name] = (total / len(states)).to(tensor.dtype)
        else:
            mean[name] = tensor
    side = out.with_name(out.name + ".partial")
    shutil.rmtree(side, ignore_errors=True)
    shutil.copytree(sources[-1], side, ignore=shutil.ignore_patterns(*_NOT_COPIED))
    save_file(mean, side / WEIGHTS, metadata={"format": "pt"})
    _note_in_card(side, sources)
    (side / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(side, out)
    return out


def _note_in_card(folder: Path, sources: list[Path]) -> None:
    """The last checkpoint's card, less its evaluation (that was another model's: evaluating the mean writes its
    own), plus a note naming the checkpoints averaged."""
    from huggingface_hub import ModelCard

    from vlmrl.cards import drop_section, upsert_section

    path = folder / "README.md"
    if not path.exists():
        return
    card = ModelCard.load(path)
    card.data.eval_results = None
    text = card.text
    for name in ("evaluation", "video"):
        text = drop_section(text, name)
    names = ", ".join(f"`{s.parent.name}`" for s in sources)
    note = (f"**Averaged weights.** This model is the mean of {len(sources)} checkpoints' weights ({names}), "
            f"the last of which gave its configuration and tokenizer; `{RECORD}` names them with their SHA-256.")
    card.text = upsert_section(text, "average", note)
    card.save(path)


def main(argv: list[str] | None = None) -> None:
    from vlmrl.cli import ArgumentParser

    parser = ArgumentParser(description="Write one model whose weights are the mean of several checkpoints' (same "
                                         "architecture); the last one gives its configuration, tokenizer and card. "
                                         "Evaluate it with evaluate.py --model <output-dir>.")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (each with model.safetensors)")
    parser.add_argument("--output-dir", required=True, help="where the averaged model goes (replaced if it exists)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if out.resolve() in {Path(c).resolve() for c in args.checkpoints}:
        raise ValueError(f"--output-dir {out} is one of the checkpoints averaged: write the mean elsewhere")
    average_checkpoints(args.checkpoints, out)
    print(f"wrote the mean of {len(args.checkpoints)} checkpoints to {out}")


if __name__ == "__main__":
    from vlmrl.cli import run

    run(main)
