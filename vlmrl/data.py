"""Dataset schemas and storage: a dataset on disk has the Hub's own shape.

A dataset directory holds parquet shards under ``data/`` and a ``README.md`` card, so
``datasets.load_dataset(path)`` reads it (the Hub's default layout: ``data/*.parquet`` is the
train split) and a push makes it the ``iteration-N`` config of a Hub dataset
(``load_dataset("user/name", "iteration-2")``). The local card deliberately names no
``configs``: with them, datasets 5.2 caches a local folder by its name and config only,
so a resumed collection or ``iteration_2/episodes`` after ``iteration_1/episodes`` would
load stale rows; without them it hashes the files themselves. Writers add one shard
per finished unit of work (an episode, a batch of reflections) with an atomic rename:
an interrupted run keeps what it finished, and a re-run skips it.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, Image, Sequence, Value

EPISODE_FEATURES = Features(
    {
        "episode_id": Value("int32"),
        "seed": Value("int64"),
        "step": Value("int32"),
        "frame": Image(),
        "action": Value("string"),
        "reasoning": Value("string"),
        "raw_output": Value("string"),
        "valid": Value("bool"),
        "teacher": Value("bool"),
        "reward": Value("float32"),
        "terminated": Value("bool"),
        "truncated": Value("bool"),
        "return_to_go": Value("float32"),
        "ram": Sequence(Value("uint8"), length=128),
        "model": Value("string"),
        "iteration": Value("int32"),
    }
)
EPISODE_COLUMNS = list(EPISODE_FEATURES)


def discounted_returns(rewards: list[float] | np.ndarray, gamma: float) -> np.ndarray:
    """return_to_go[t] = reward[t] + gamma * return_to_go[t + 1], computed backwards."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


META_DIR = ".vlmrl"


def meta_path(dataset_dir: str | Path, name: str) -> Path:
    """Where a phase keeps its summary and resume records: a hidden folder, which datasets' loader skips
    (a JSON file beside the shards would be taken for data)."""
    return Path(dataset_dir) / META_DIR / name


def shard_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / "data"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(frame: np.ndarray) -> bytes:
    """An RGB frame (height, width, 3) as a PNG, written here: each row but the first stored as its
    difference from the row above (PNG's "Up" filter: the playfield's repeated rows become zeros), then
    deflated at level 1. Lossless (tested against PIL's reader); about half the time of PIL's writer,
    most of it in numpy and zlib, which release the GIL (~1.3 kB a Pong frame)."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    height, width, channels = frame.shape
    if channels != 3:
        raise ValueError(f"png_bytes takes RGB frames (height, width, 3), got shape {frame.shape}")
    flat = frame.reshape(height, width * 3)
    rows = np.empty((height, width * 3 + 1), np.uint8)
    rows[0, 0], rows[0, 1:] = 0, flat[0]  # filter type 0 (none), the row as it is
    rows[1:, 0] = 2  # filter type 2 (up): the difference from the row above, modulo 256
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    deflate = zlib.compressobj(1)
    data = deflate.compress(rows) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, filters, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def write_shard(dataset_dir: str | Path, name: str, rows: list[dict[str, Any]] | Any, features: Features) -> Path:
    """Writes ``rows`` as ``data/<name>.parquet`` atomically (temp file, then rename).

    ``rows`` is a list of dicts, or a ``pyarrow.Table`` already in ``features``' schema (images as
    ``{"bytes", "path"}`` structs), written as it is: the same file ``datasets`` writes, without its
    row-by-row encoding.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = shard_dir(dataset_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{name}.parquet"
    tmp = directory / f".{name}.parquet.tmp"
    if isinstance(rows, pa.Table):
        # Page checksums let a resumed run tell a shard damaged on disk from a good one (verify_shards).
        pq.write_table(rows.cast(features.arrow_schema), str(tmp), write_page_checksum=True)
        _record_digest(dataset_dir, name, tmp)
        os.replace(tmp, final)
        return final
    with _quiet_datasets():
        # An empty shard still marks its unit of work done (e.g. every reflection was unusable).
        table = Dataset.from_list(rows, features=features) if rows else Dataset.from_dict(
            {name: [] for name in features}, features=features)
        table.to_parquet(str(tmp))
    _record_digest(dataset_dir, name, tmp)
    os.replace(tmp, final)
    return final


def _digest_path(dataset_dir: str | Path, name: str) -> Path:
    return meta_path(dataset_dir, "digests") / f"{name}.sha256"


def file_sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _record_digest(dataset_dir: str | Path, name: str, path: Path) -> None:
    # Written before the shard's rename: a shard on disk always has its digest, so any later change to its
    # bytes (a disk fault, a partial copy) is found at resume, wherever in the file it is.
    digest = _digest_path(dataset_dir, name)
    digest.parent.mkdir(parents=True, exist_ok=True)
    digest.write_text(file_sha256(path) + "\n")


@contextmanager
def _quiet_datasets():
    """No per-shard 'Creating parquet' bars under the phase's own progress bar."""
    import datasets

    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def existing_shards(dataset_dir: str | Path) -> list[str]:
    """Names of the finished shards (a crashed run's temp files are ignored)."""
    directory = shard_dir(dataset_dir)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.parquet"))


def repair_command(dataset_dir: str | Path) -> str:
    """The one command that drops a dataset's unreadable shards, so the phase that wrote them redoes them."""
    return f"python -m vlmrl.data repair {dataset_dir}"


def shard_problem(path: str | Path) -> str | None:
    """Why a parquet shard cannot be read back whole (truncated, damaged, or not parquet), or None when it can.

    Every page is decompressed and, where the writer stored them, its checksum verified: a shard damaged
    in the middle fails here instead of in a later phase with an error that names no file.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    digest = _digest_path(path.parent.parent, path.stem)
    if digest.exists() and digest.read_text().strip() != file_sha256(path):
        return "its bytes differ from those written (checksum)"
    try:
        expected = pq.read_metadata(str(path)).num_rows
        table = pq.read_table(str(path), page_checksum_verification=True)
        if table.num_rows != expected:
            return f"{table.num_rows} rows of {expected}"
        for column in table.columns:  # touch every value (a damaged binary page may decode without error)
            column.validate(full=True)
    except Exception as err:  # noqa: BLE001 - whatever a damaged file raises, the answer is "unreadable"
        return " ".join(str(err).split())[:160] or type(err).__name__
    return None


def verify_shards(dataset_dir: str | Path) -> None:
    """Refuses a dataset folder holding shards that cannot be read, naming them and the repair command."""
    bad = [(p, shard_problem(p)) for p in sorted(shard_dir(dataset_dir).glob("*.parquet"))]
    bad = [(p, why) for p, why in bad if why is not None]
    if bad:
        names = ", ".join(f"{p.name} ({why})" for p, why in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3
                                                                         else "")
        raise ValueError(f"{dataset_dir} holds unreadable shards: {names}; run `{repair_command(dataset_dir)}` to "
                         "drop them, then the same command again to redo them")


def repair(dataset_dir: str | Path) -> list[str]:
    """Deletes the unreadable shards of a dataset folder (and crashed runs' temp files); returns their names.

    The phase that wrote the folder then redoes exactly those units of work on its next run.
    """
    directory = shard_dir(dataset_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{dataset_dir} holds no dataset (no {directory})")
    dropped = []
    for path in sorted(directory.glob("*.parquet")):
        if shard_problem(path) is not None:
            path.unlink()
            _digest_path(dataset_dir, path.stem).unlink(missing_ok=True)
            dropped.append(path.name)
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink()
    summary = meta_path(dataset_dir, "summary.json")
    if dropped and summary.exists():
        summary.unlink()  # the folder is no longer finished: the Makefile must run its phase again
    return dropped


def write_dataset_card(dataset_dir: str | Path, *, title: str, body: str, tags: list[str] | None = None) -> None:
    """The dataset's card (what the data is); see the module docstring for why it names no configs."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(tags=["vlmrl", "atari", *(tags or [])])
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n")
    card.save(Path(dataset_dir) / "README.md")


def load_table(dataset_dir: str | Path) -> Dataset:
    """Loads a local dataset folder written by vlmrl (all shards, one split)."""
    import pyarrow.parquet as pq
    from datasets import load_dataset

    files = sorted(str(p) for p in shard_dir(dataset_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no dataset shards under {shard_dir(dataset_dir)}")
    verify_shards(dataset_dir)
    if sum(pq.read_metadata(f).num_rows for f in files) == 0:
        raise ValueError(f"the dataset at {dataset_dir} is empty (its shards hold no rows)")

    return load_dataset("parquet", data_files=files, split="train")


def load_any(reference: str, *, config: str | None = None, revision: str | None = None) -> Dataset:
    """A dataset from a local folder (vlmrl's layout or a saved dataset) or a Hub id."""
    from datasets import load_dataset, load_from_disk

    path = Path(reference).expanduser()
    if path.exists():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            try:
                return load_from_disk(str(path))
            except (IndexError, ValueError, OSError) as err:  # e.g. a saved dataset with no rows
                raise ValueError(f"could not read the dataset at {reference}: {err!r} (is it empty?)") from None
        if shard_dir(path).is_dir():
            return load_table(path)
        raise FileNotFoundError(f"{reference!r} is a folder but holds no dataset (expected data/*.parquet)")
    if reference.startswith((".", "/", "~")) or reference.count("/") != 1:
        raise FileNotFoundError(f"dataset {reference!r} does not exist (neither a local folder nor a Hub id user/name)")
    try:
        return load_dataset(reference, config, split="train", revision=revision)
    except Exception as err:  # noqa: BLE001 - the Hub's errors vary by cause; the message says which
        raise FileNotFoundError(f"could not load dataset {reference!r} from the Hub: {err}") from None


def require_columns(dataset: Dataset, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the {what} dataset lacks columns {missing} (it has {dataset.column_names}); "
            f"was it written by the matching vlmrl phase?"
        )


def write_json(path: str | Path, obj: Any) -> None:
    """Writes JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def ensure_writable(directory: str | Path) -> Path:
    """Creates ``directory`` or says clearly why it can't be written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output directory {str(directory)!r} is not writable: {err.strerror or err}") from None
    return directory


def changed_settings(previous: dict[str, Any], settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs, as ``{key: (recorded, given)}``. A key the record lacks (written by older code)
    is not compared: nothing says what it was."""
    return {k: (previous[k], v) for k, v in settings.items() if k in previous and previous[k] != v}


def check_manifest(output_dir: Path, name: str, settings: dict[str, Any], what: str, record: bool = True) -> None:
    """Refuses to resume into a folder made with other settings; records the settings otherwise.

    With ``record=False`` it only checks: a phase checks first and records (``record_manifest``) once it has
    really started (its model loaded, its inputs read), so a run that fails on a mistake leaves no record
    and the corrected command is not refused.
    """
    manifest = meta_path(output_dir, name)
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            previous = None
        if not isinstance(previous, dict):
            raise ValueError(f"{manifest} is damaged; delete it (the folder's shards are kept) and run again")
        changed = changed_settings(previous, settings)
        if changed:
            details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{output_dir} holds a {what} made with other settings ({details}); "
                "use another --output-dir, or delete it to start over"
            )
    elif existing_shards(output_dir):
        raise ValueError(f"{output_dir} already holds dataset shards of unknown origin; use another --output-dir")
    if record:
        record_manifest(output_dir, name, settings)


def record_manifest(output_dir: Path, name: str, settings: dict[str, Any]) -> None:
    """Records the settings a later run must share to resume ``output_dir`` (kept when already there)."""
    manifest = meta_path(output_dir, name)
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        settings = {**settings, **previous}  # a resumed run keeps the first record (check_manifest compared them)
    write_json(manifest, settings)


def main(argv: list[str] | None = None) -> None:
    """``python -m vlmrl.data repair <folder>``: drop a dataset's unreadable shards so they are redone."""
    from vlmrl.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m vlmrl.data", description="Dataset folder maintenance.")
    sub = parser.add_subparsers(dest="command", required=True)
    fix = sub.add_parser("repair", help="delete unreadable shards; the phase that wrote them redoes them")
    fix.add_argument("folder", help="a dataset folder written by collect.py or reflect.py")
    args = parser.parse_args(argv)
    dropped = repair(args.folder)
    if dropped:
        print(f"dropped {len(dropped)} unreadable shard(s) from {args.folder}: {', '.join(dropped)}; "
              "run the phase's command again to redo them")
    else:
        print(f"{args.folder}: every shard reads back whole; nothing to repair")


if __name__ == "__main__":
    from vlmrl.cli import run

    run(main)
