"""Sharing on the Hugging Face Hub: publish episodes, reflections, checkpoints and evaluations; read them back.

Local storage stays the default and is always written first: a push only uploads what is on disk, so a
push that fails (the Hub unreachable, no token, a 5xx mid-upload, ``HF_HUB_OFFLINE=1``) loses nothing and
raises a :class:`HubPushError` that names the one command that retries it::

    python -m vlmrl.hub push-dataset data/experiments/x/iteration_2/episodes user/pong-episodes --config iteration-2
    python -m vlmrl.hub push-checkpoint data/experiments/x/iteration_2/checkpoint user/pong --revision iteration-2
    python -m vlmrl.hub push-eval data/experiments/x/iteration_2/results.json user/pong --revision iteration-2

Layout on the Hub: a dataset repo holds one config per iteration (``iteration-2/*.parquet``, named in the
README's YAML), so ``load_dataset("user/name", "iteration-2")`` and ``user/name:iteration-2`` as any
phase's input read the same rows; a model repo holds a branch per iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

if TYPE_CHECKING:
    from datasets import Dataset

T = TypeVar("T")
CardT = TypeVar("CardT", DatasetCard, ModelCard)

# user/name, then an optional :config and @revision (a revision may hold slashes: refs/pr/1).
_REFERENCE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<revision>[\w./-]+))?$")
_CONFIG_NAME = re.compile(r"^[\w.-]+$")
# Intermediate Trainer checkpoints (optimizer states) are not the model: never publish them.
CHECKPOINT_IGNORE_PATTERNS = ["checkpoint-*/*", "*.tmp"]
_TRUE = {"1", "ON", "YES", "TRUE"}
_RETRY_PREFIX = ["python", "-m", "vlmrl.hub"]


class HubPushError(Exception):
    """A push to the Hub failed; the local copy is intact and ``retry_command`` pushes it again."""

    def __init__(self, what: str, local_path: str | Path | None, retry_command: str, reason: str):
        self.what, self.retry_command, self.reason = what, retry_command, reason
        self.local_path = str(local_path) if local_path is not None else None
        kept = f"The local copy at {local_path} is intact" if local_path is not None else "Nothing local was changed"
        super().__init__(f"{what} failed: {reason}\n{kept}; nothing was lost. Retry the push with:\n  {retry_command}")


# ---------------------------------------------------------------------------------------------- references


def parse_dataset_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``user/name[:config][@revision]`` -> (repo id, config, revision); a local path -> (path, None, None)."""
    if Path(reference).expanduser().exists():
        return reference, None, None
    match = _REFERENCE.match(reference)
    if match is None:
        return reference, None, None
    return match["repo"], match["config"], match["revision"]


def hub_id(reference: str) -> str | None:
    """The Hub repo id a reference names, or None for a local path."""
    repo, _, _ = parse_dataset_reference(reference)
    return repo if _REFERENCE.match(repo) and not Path(repo).expanduser().exists() else None


def hub_repo_id(prefix: str, kind: str) -> str:
    """The repo a phase publishes to under ``HUB=user/prefix``: ``-episodes``, ``-reflections``, or the model."""
    suffixes = {"episodes": "-episodes", "reflections": "-reflections", "checkpoint": "", "model": ""}
    if kind not in suffixes:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {sorted(suffixes)}")
    return prefix.rstrip("/") + suffixes[kind]


def load_dataset_reference(reference: str) -> Dataset:
    """A phase's input from a local folder or ``user/name[:config][@revision]`` on the Hub."""
    from vlmrl.data import load_any

    path, config, revision = parse_dataset_reference(reference)
    try:
        return load_any(path, config=config, revision=revision)
    except FileNotFoundError as err:
        if _offline() and hub_id(reference):
            raise FileNotFoundError(
                f"{err} (HF_HUB_OFFLINE=1 is set: only a Hub dataset already in the local cache can be read; "
                "unset it, or pass a local folder)"
            ) from None
        raise


# ---------------------------------------------------------------------------------------------- faults


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; a user may set it later in the same process.
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def retry_command(*args: str) -> str:
    """The shell command that runs ``python -m vlmrl.hub <args>``."""
    return shlex.join([*_RETRY_PREFIX, *args])


def _causes(err: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        chain.append(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return chain


def describe_failure(err: BaseException) -> str:
    """What went wrong, in words, from the first Hub error in the exception's chain."""
    for cause in _causes(err):
        if isinstance(cause, OfflineModeIsEnabled):
            return "offline mode is on (HF_HUB_OFFLINE=1); unset it where the Hub is reachable"
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            detail = str(cause).splitlines()[0] if str(cause) else ""
            if status == 401:
                return ("the Hub rejected the token (401 Unauthorized): log in with `hf auth login` "
                        "or set HF_TOKEN to a token with write access")
            if status == 403:
                return f"the token may not write to this repository (403 Forbidden): {detail}"
            if status >= 500:
                return f"the Hub failed with a server error ({status}) during the upload, usually transient: {detail}"
            return f"the Hub answered {status}: {detail}"
        if isinstance(cause, (HTTPError, ConnectionError, TimeoutError)):
            return f"could not reach the Hub ({type(cause).__name__}: {cause})"
    return f"{type(err).__name__}: {err}"


def _pushing(what: str, local_path: str | Path | None, retry: str, token: str | None, push: Callable[[], T]) -> T:
    """Runs one push; every way the Hub can fail becomes a HubPushError that says how to retry."""
    if _offline():
        raise HubPushError(what, local_path, retry,
                           "offline mode is on (HF_HUB_OFFLINE=1); unset it where the Hub is reachable")
    if not (token or get_token()):
        raise HubPushError(what, local_path, retry,
                           "no Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access")
    try:
        return push()
    # HTTPError covers HfHubHTTPError and httpx transport errors; OSError covers connection, timeout and
    # offline errors; LFS and Xet uploads wrap what failed mid-upload in a RuntimeError.
    except (HTTPError, OSError, RuntimeError) as err:
        raise HubPushError(what, local_path, retry, describe_failure(err)) from err


# ---------------------------------------------------------------------------------------------- cards


def _empty_card(card_class: type[CardT]) -> CardT:
    """A card with an empty YAML header, to be filled through its ``data``."""
    return card_class("---\n{}\n---\n")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _section_markers(name: str) -> tuple[str, str]:
    return f"<!-- vlmrl:begin {name} -->", f"<!-- vlmrl:end {name} -->"


def upsert_section(text: str, name: str, content: str) -> str:
    """Replaces the card body's section ``name`` (between vlmrl markers), or appends it; the rest is kept."""
    begin, end = _section_markers(name)
    block = f"{begin}\n{content.strip()}\n{end}\n"
    match = re.search(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", text, flags=re.DOTALL)
    if match:
        return text[: match.start()] + block + text[match.end():]
    return text.rstrip() + "\n\n" + block if text.strip() else "\n" + block


def _split_title(text: str) -> tuple[str | None, str]:
    """A card body's leading ``# title`` and the rest."""
    stripped = text.strip()
    first, _, rest = stripped.partition("\n")
    if first.startswith("# "):
        return first[2:].strip(), rest.strip()
    return None, stripped


def merge_dataset_card(local: DatasetCard | None, remote: DatasetCard | None, *, repo_id: str,
                       config_name: str) -> DatasetCard:
    """The repo's card with ``config_name`` added (or replaced) in its YAML configs and its body."""
    remote_data = remote.data.to_dict() if remote is not None else {}
    local_data = local.data.to_dict() if local is not None else {}
    title, body = _split_title(local.text) if local is not None else (None, "")
    configs = [c for c in remote_data.get("configs", []) if c.get("config_name") != config_name]
    configs.append({"config_name": config_name,
                    "data_files": [{"split": "train", "path": f"{config_name}/*.parquet"}]})
    configs.sort(key=lambda c: _natural_key(c["config_name"]))
    tags = list(dict.fromkeys([*remote_data.get("tags", []), *local_data.get("tags", [])]))
    # The local card's own keys (license, task categories, ...) win; its "default" config is the local
    # layout (data/*.parquet), which the repo does not have.
    merged = {**remote_data, **{k: v for k, v in local_data.items() if k != "configs"}, "configs": configs}
    if tags:
        merged["tags"] = tags
    merged.setdefault("pretty_name", title or repo_id.split("/")[-1])

    if remote is not None:
        text = remote.text
    else:
        text = (f"\n# {title or repo_id}\n\n"
                f"Each vlmrl iteration is one config: `load_dataset(\"{repo_id}\", \"{config_name}\", "
                f"split=\"train\")`, or pass `{repo_id}:{config_name}` to any vlmrl phase.\n")
    card = _empty_card(DatasetCard)
    card.data = DatasetCardData(**merged)
    card.text = upsert_section(text, config_name, f"## {config_name}\n\n{body}")
    return card


_MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A vision-language model fine-tuned with vlmrl to play **{{ game }}**: iteration {{ iteration }} of a loop of
trial → reflection → fine-tuning, starting from {{ base_model_link }}.

## Training data

{% for line in dataset_lines %}- {{ line }}
{% else %}(not recorded)
{% endfor %}
{% if train_rows %}
## Training

| metric | value |
|---|---|
{% for key, value in train_rows %}| {{ key }} | {{ value }} |
{% endfor %}{% endif %}
{{ evaluation_section }}
{% if reward_plot %}
## Reward

![Return per iteration]({{ reward_plot }})
{% endif %}
{% if usage %}
## Use

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{{ usage.repo_id }}", revision="{{ usage.revision }}")
processor = AutoProcessor.from_pretrained("{{ usage.repo_id }}", revision="{{ usage.revision }}")
```
{% endif %}
{% if recipe %}
## Recipe

```yaml
{{ recipe }}
```
{% endif %}
"""

# results.json keys -> (model-index metric type, display name). `mean_reward` is the Hub's RL convention.
_EVAL_METRICS = (
    ("mean_return", "mean_reward", "mean return"),
    ("std_return", "std_reward", "std of return"),
    ("human_normalized", "human_normalized_score", "human-normalized score"),
    ("oracle_agreement", "oracle_agreement", "agreement with the RAM oracle"),
    ("invalid_rate", "invalid_rate", "invalid outputs"),
)


def eval_results_from(results: Mapping[str, Any], *, game: str | None = None) -> list[EvalResult]:
    """A results.json as model-index entries (task reinforcement-learning, the game as the dataset)."""
    env = results.get("game") or game or "unknown"
    args = {"episodes": results["episodes"]} if results.get("episodes") is not None else None
    return [
        EvalResult(task_type="reinforcement-learning", task_name="reinforcement-learning", dataset_type=env,
                   dataset_name=env, dataset_args=args, metric_type=metric_type, metric_name=metric_name,
                   metric_value=float(results[key]))
        for key, metric_type, metric_name in _EVAL_METRICS
        if isinstance(results.get(key), (int, float)) and not isinstance(results.get(key), bool)
    ]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def _evaluation_section(results: Mapping[str, Any] | None) -> str:
    if not results:
        return ""
    # Per-episode lists (returns, seeds) stay in results.json; the card shows the summary.
    rows = [(k, _format_value(v)) for k, v in results.items()
            if v is not None and (k == "ci95" or not isinstance(v, (dict, list, tuple)))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## Evaluation\n\n| metric | value |\n|---|---|\n{table}\n"


def _same_evaluation(a: EvalResult, b: EvalResult) -> bool:
    # A new evaluation of the same game replaces the old one whole: no metric of a stale run may linger.
    return (a.task_type, a.dataset_type, a.dataset_config) == (b.task_type, b.dataset_type, b.dataset_config)


def merge_eval_results(card: ModelCard, results: Mapping[str, Any], *, model_name: str | None = None) -> ModelCard:
    """Puts ``results`` in the card's model-index (replacing the game's earlier ones) and Evaluation section."""
    new = eval_results_from(results)
    kept = [e for e in (card.data.eval_results or []) if not any(_same_evaluation(e, n) for n in new)]
    card.data.model_name = card.data.model_name or model_name or Path(str(results.get("model", "model"))).name
    card.data.eval_results = kept + new or None
    card.text = upsert_section(card.text, "evaluation", _evaluation_section(results))
    return card


def _recipe_text(recipe: Mapping[str, Any] | str | Path | None) -> str | None:
    if recipe is None:
        return None
    if isinstance(recipe, Mapping):
        return yaml.safe_dump(dict(recipe), sort_keys=False).strip()
    if isinstance(recipe, Path) or (len(str(recipe)) < 4096 and Path(str(recipe)).is_file()):
        return Path(recipe).read_text().strip()
    return str(recipe).strip()


def model_card(
    *,
    base_model: str,
    iteration: int,
    datasets: Sequence[str] = (),
    game: str = "ALE/Pong-v5",
    recipe: Mapping[str, Any] | str | Path | None = None,
    train_metrics: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, Any] | None = None,
    reward_plot: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
) -> ModelCard:
    """The card of checkpoint M(iteration): base model, training data, metrics, evaluation, reward plot, recipe.

    ``datasets`` are references (local paths or ``user/name:config``); Hub ones go into the YAML.
    ``reward_plot`` is a path relative to the card's folder (``write_model_card`` copies it there).
    """
    hub_base = hub_id(base_model)
    hub_datasets = list(dict.fromkeys(r for r in map(hub_id, datasets) if r))
    game_tag = re.sub(r"-v\d+$", "", game.split("/")[-1]).lower()  # ALE/Pong-v5 -> pong
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"vlmrl-{game_tag}-iteration-{iteration}")
    data = ModelCardData(
        base_model=hub_base,
        datasets=hub_datasets or None,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["vlmrl", "atari", "reinforcement-learning", game_tag],
        model_name=name,
        eval_results=eval_results_from(eval_results, game=game) if eval_results else None,
    )
    evaluation = _evaluation_section(eval_results)
    card = ModelCard.from_template(
        data,
        template_str=_MODEL_CARD_TEMPLATE,
        model_name=name,
        game=game,
        iteration=iteration,
        base_model_link=f"[{base_model}](https://huggingface.co/{hub_base})" if hub_base else f"`{base_model}`",
        dataset_lines=[f"[{r}](https://huggingface.co/datasets/{hub_id(r)})" if hub_id(r) else f"`{r}`"
                       for r in datasets],
        train_rows=[(k, _format_value(v)) for k, v in (train_metrics or {}).items()],
        # Marked so that add_eval_results_to_card / push_eval_results can replace it later.
        evaluation_section=upsert_section("", "evaluation", evaluation).strip() if evaluation else "",
        reward_plot=reward_plot,
        usage={"repo_id": repo_id, "revision": revision or f"iteration-{iteration}"} if repo_id else None,
        recipe=_recipe_text(recipe),
    )
    card.text = re.sub(r"\n{3,}", "\n\n", card.text)
    return card


def write_model_card(checkpoint_dir: str | Path, *, reward_plot: str | Path | None = None, **kwargs: Any) -> Path:
    """Saves ``model_card(**kwargs)`` as the checkpoint's README.md, copying the reward plot beside it."""
    checkpoint_dir = Path(checkpoint_dir)
    link = None
    if reward_plot is not None:
        plot = Path(reward_plot)
        target = checkpoint_dir / plot.name
        if plot.resolve() != target.resolve():
            shutil.copyfile(plot, target)
        link = plot.name  # relative: it renders on the Hub and in a local viewer alike
    card = model_card(reward_plot=link, **kwargs)
    path = checkpoint_dir / "README.md"
    card.save(path)
    return path


def add_eval_results_to_card(card_path: str | Path, results: Mapping[str, Any] | str | Path) -> ModelCard:
    """Writes evaluation results into a local model card (a README.md or the checkpoint folder holding it)."""
    path = Path(card_path)
    if path.is_dir():
        path = path / "README.md"
    card = ModelCard.load(path) if path.exists() else _empty_card(ModelCard)
    merge_eval_results(card, _read_results(results))
    card.save(path)
    return card


def _read_results(results: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(results, Mapping):
        return dict(results)
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist (evaluate.py writes results.json)")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- pushes


def _check_repo_id(repo_id: str) -> None:
    if ":" in repo_id or "@" in repo_id:
        raise ValueError(f"push to a repo id alone (user/name), not {repo_id!r}: the config or branch is "
                         "given separately (one per iteration)")
    validate_repo_id(repo_id)


def _download_card(api: HfApi, repo_id: str, repo_type: str, files: list[str], revision: str | None,
                   card_class: type[DatasetCard] | type[ModelCard]):
    if "README.md" not in files:
        return None
    path = api.hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision)
    return card_class.load(path)


def push_dataset_dir(local_dir: str | Path, repo_id: str, *, config_name: str, token: str | None = None,
                     private: bool = False) -> str:
    """Publishes a vlmrl dataset folder as config ``config_name`` of a Hub dataset repo, in one commit; returns its URL.

    The shards go to ``<config_name>/``, replacing that config's files; the repo card's YAML ``configs``
    gain the config and its body a section made from the local card's body; other configs are untouched.
    """
    from vlmrl.data import shard_dir

    local_dir = Path(local_dir)
    shards = sorted(shard_dir(local_dir).glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no dataset shards under {shard_dir(local_dir)}: nothing to push")
    _check_repo_id(repo_id)
    if not _CONFIG_NAME.match(config_name):
        raise ValueError(f"config name {config_name!r} may hold only letters, digits, '-', '_' and '.'")
    local_card = DatasetCard.load(local_dir / "README.md") if (local_dir / "README.md").exists() else None
    retry = retry_command("push-dataset", str(local_dir), repo_id, "--config", config_name,
                          *(["--private"] if private else []))

    def push() -> str:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        files = api.list_repo_files(repo_id, repo_type="dataset")
        remote_card = _download_card(api, repo_id, "dataset", files, None, DatasetCard)
        card = merge_dataset_card(local_card, remote_card, repo_id=repo_id, config_name=config_name)
        # The collection's summary and settings travel with the shards: they are the record of the run.
        additions = [CommitOperationAdd(f"{config_name}/{p.name}", p) for p in shards]
        records = sorted((local_dir / ".vlmrl").glob("*.json"))
        additions += [CommitOperationAdd(f"{config_name}/.vlmrl/{p.name}", p) for p in records]
        additions.append(CommitOperationAdd("README.md", str(card).encode()))
        added = {op.path_in_repo for op in additions}
        # A re-push replaces the config: shards the local folder no longer has must not mix in.
        stale = [CommitOperationDelete(f) for f in files if f.startswith(f"{config_name}/") and f not in added]
        api.create_commit(repo_id, [*stale, *additions], repo_type="dataset",
                          commit_message=f"vlmrl: {config_name} ({len(shards)} shards from {local_dir.name})")
        return str(url)

    return _pushing(f"pushing dataset {local_dir} to {repo_id} (config {config_name})", local_dir, retry, token, push)


def push_checkpoint(local_dir: str | Path, repo_id: str, *, revision: str, token: str | None = None,
                    private: bool = False, commit_message: str | None = None) -> str:
    """Uploads a checkpoint folder to branch ``revision`` (e.g. ``iteration-2``) of a model repo; returns its URL.

    The branch becomes a mirror of the folder: files it held that the folder lacks are deleted.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir() or not any(local_dir.iterdir()):
        raise FileNotFoundError(f"checkpoint folder {str(local_dir)!r} does not exist or is empty: nothing to push")
    _check_repo_id(repo_id)
    retry = retry_command("push-checkpoint", str(local_dir), repo_id, "--revision", revision,
                          *(["--private"] if private else []))

    def push() -> str:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=local_dir, repo_type="model", revision=revision,
            commit_message=commit_message or f"vlmrl checkpoint {revision}",
            ignore_patterns=list(CHECKPOINT_IGNORE_PATTERNS), delete_patterns=["*"],
        )
        return f"{url}/tree/{revision}"

    return _pushing(f"pushing checkpoint {local_dir} to {repo_id}@{revision}", local_dir, retry, token, push)


def push_eval_results(repo_id: str, results: Mapping[str, Any] | str | Path, *, revision: str | None = None,
                      token: str | None = None) -> str:
    """Writes evaluation results (a dict or a results.json) into a model repo's card, plus results.json; one commit.

    Pass the results.json path rather than the dict: the retry command then names it.
    """
    _check_repo_id(repo_id)
    data = _read_results(results)
    source = None if isinstance(results, Mapping) else str(results)
    retry = retry_command("push-eval", source or "RESULTS_JSON", repo_id,
                          *(["--revision", revision] if revision else []))

    def push() -> str:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        files = api.list_repo_files(repo_id, repo_type="model", revision=revision)
        card = _download_card(api, repo_id, "model", files, revision, ModelCard) or _empty_card(ModelCard)
        merge_eval_results(card, data, model_name=repo_id.split("/")[-1])
        operations = [
            CommitOperationAdd("README.md", str(card).encode()),
            CommitOperationAdd("results.json", (json.dumps(data, indent=2) + "\n").encode()),
        ]
        api.create_commit(repo_id, operations, repo_type="model", revision=revision,
                          commit_message=f"vlmrl: evaluation results ({revision or 'main'})")
        return f"{url}/tree/{revision or constants.DEFAULT_REVISION}"

    return _pushing(f"pushing evaluation results to {repo_id}@{revision or 'main'}", source, retry, token, push)


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlmrl.hub",
        description="Publish vlmrl outputs to the Hugging Face Hub, or retry a push that failed. "
                    "The token comes from `hf auth login` or HF_TOKEN.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push-dataset", help="push an episodes/reflections folder as one config of a dataset repo",
                       description="Push a vlmrl dataset folder (data/*.parquet + README.md) as config CONFIG "
                                   "of a Hub dataset repo; load it back with user/name:CONFIG.")
    p.add_argument("local_dir", help="the dataset folder, e.g. data/experiments/x/iteration_2/episodes")
    p.add_argument("repo_id", help="the Hub dataset repo, user/name")
    p.add_argument("--config", required=True, help="config name, one per iteration: iteration-2")
    p.add_argument("--private", action="store_true", help="create the repo private if it does not exist")
    p = sub.add_parser("push-checkpoint", help="push a checkpoint folder to a branch of a model repo",
                       description="Upload a checkpoint folder to branch REVISION of a Hub model repo "
                                   "(the branch is created from main if missing).")
    p.add_argument("local_dir", help="the checkpoint folder (save_pretrained output + README.md)")
    p.add_argument("repo_id", help="the Hub model repo, user/name")
    p.add_argument("--revision", required=True, help="branch, one per iteration: iteration-2")
    p.add_argument("--private", action="store_true", help="create the repo private if it does not exist")
    p.add_argument("--message", default=None, help="commit message")
    p = sub.add_parser("push-eval", help="write a results.json into a model repo's card",
                       description="Add the evaluation results in RESULTS_JSON to the model card (model-index) "
                                   "of a Hub model repo, at branch REVISION.")
    p.add_argument("results_json", help="the results.json evaluate.py wrote")
    p.add_argument("repo_id", help="the Hub model repo, user/name")
    p.add_argument("--revision", default=None, help="branch of the checkpoint evaluated: iteration-2")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m vlmrl.hub``: exit 0 pushed, 2 a mistake in the arguments, 3 the push failed."""
    from vlmrl.cli import USER_ERRORS

    args = _parser().parse_args(argv)
    try:
        if args.command == "push-dataset":
            url = push_dataset_dir(args.local_dir, args.repo_id, config_name=args.config, private=args.private)
        elif args.command == "push-checkpoint":
            url = push_checkpoint(args.local_dir, args.repo_id, revision=args.revision, private=args.private,
                                  commit_message=args.message)
        else:
            url = push_eval_results(args.repo_id, args.results_json, revision=args.revision)
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"pushed: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
