"""Publishing on the Hugging Face Hub: episodes, reflections, checkpoints and evaluations.

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

import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    DatasetCard,
    HfApi,
    ModelCard,
    constants,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

if TYPE_CHECKING:
    pass

from vlmrl.cards import empty_card, merge_dataset_card, merge_eval_results, read_results
from vlmrl.cli import ArgumentParser, run
from vlmrl.errors import USER_ERRORS, HubPushError
from vlmrl.references import hub_offline

T = TypeVar("T")

_CONFIG_NAME = re.compile(r"^[\w.-]+$")
# Intermediate Trainer checkpoints (optimizer states) are not the model: never publish them.
CHECKPOINT_IGNORE_PATTERNS = ["checkpoint-*/*", "*.tmp"]
_RETRY_PREFIX = ["python", "-m", "vlmrl.hub"]


# ---------------------------------------------------------------------------------------------- faults


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
    if hub_offline():
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
    data = read_results(results)
    source = None if isinstance(results, Mapping) else str(results)
    retry = retry_command("push-eval", source or "RESULTS_JSON", repo_id,
                          *(["--revision", revision] if revision else []))

    def push() -> str:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        files = api.list_repo_files(repo_id, repo_type="model", revision=revision)
        card = _download_card(api, repo_id, "model", files, revision, ModelCard) or empty_card(ModelCard)
        merge_eval_results(card, data, model_name=repo_id.split("/")[-1])
        operations = [
            CommitOperationAdd("README.md", str(card).encode()),
            CommitOperationAdd("results.json", (json.dumps(data, indent=2) + "\n").encode()),
        ]
        api.create_commit(repo_id, operations, repo_type="model", revision=revision,
                          commit_message=f"vlmrl: evaluation results ({revision or 'main'})")
        return f"{url}/tree/{revision or constants.DEFAULT_REVISION}"

    return _pushing(f"pushing evaluation results to {repo_id}@{revision or 'main'}", source, retry, token, push)


def publish_evaluation(model: str | Path | None, repo_id: str, results: str | Path, *, revision: str | None = None,
                       token: str | None = None) -> str:
    """An evaluation's results into ``repo_id@revision``'s card. A mean of checkpoints (``vlmrl.averaging``: its
    weights were never pushed by training) is uploaded there first, so the card's score sits beside its weights."""
    from vlmrl.averaging import RECORD

    if model is not None and (Path(model) / RECORD).is_file():
        push_checkpoint(model, repo_id, revision=revision or constants.DEFAULT_REVISION, token=token,
                        commit_message=f"vlmrl: mean of checkpoints ({revision or 'main'})")
    return push_eval_results(repo_id, results, revision=revision, token=token)


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
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
    run(main)
