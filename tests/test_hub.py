"""vlmrl.hub without the network: a fake Hub records what would be uploaded and serves it back.

The fake replaces the ``HfApi`` methods vlmrl.hub calls (as ``datasets``' and ``huggingface_hub``'s own unit
tests do), checks every call against the real method's signature, and stores each repo's files per revision
in a temporary folder, committing atomically like the Hub. What it serves is read back with the real
``datasets.load_dataset``: the pushed layout and README YAML are what the library understands.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shlex
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import datasets
import httpx2
import huggingface_hub
import numpy as np
import pytest
from datasets import Features
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS
from PIL import Image

from vlmrl import hub
from vlmrl.cards import add_eval_results_to_card, model_card, write_model_card
from vlmrl.data import EPISODE_FEATURES, load_any, meta_path, write_dataset_card, write_json, write_shard
from vlmrl.errors import HubPushError
from vlmrl.hub import push_checkpoint, push_dataset_dir, push_eval_results
from vlmrl.references import hub_id, hub_repo_id, load_dataset_reference, parse_dataset_reference

REAL_LOAD_DATASET = datasets.load_dataset
FEATURES = Features({k: EPISODE_FEATURES[k] for k in ("episode_id", "step", "frame", "action", "reward", "iteration")})
EPISODES_REPO = "user/pong-episodes"
MODEL_REPO = "user/pong"


def http_error(status: int, cls: type[HfHubHTTPError] = HfHubHTTPError) -> HfHubHTTPError:
    """The error huggingface_hub raises when the Hub answers ``status``."""
    url = "https://huggingface.co/api/fake"
    response = httpx2.Response(status, request=httpx2.Request("POST", url))
    return cls(f"{status} Error for url: {url}", response=response)


class FakeHub:
    """The Hub in a folder: files per (repo type, repo id, revision); faults on demand."""

    METHODS = ("create_repo", "create_branch", "list_repo_files", "hf_hub_download", "create_commit",
               "upload_folder")

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[str] = []
        self.commits: list[dict] = []
        # Called with the method's name as it starts: raise here to fail that call.
        self.fault: Callable[[str], None] | None = None
        # Fail a commit with this error once this many of its files are uploaded (a 5xx mid-upload).
        self.fail_upload: tuple[int, Exception] | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in self.METHODS:
            monkeypatch.setattr(HfApi, name, self._checked(name))

    def _checked(self, name: str):
        real, fake = getattr(HfApi, name), getattr(self, name)

        def method(api: HfApi, *args, **kwargs):
            inspect.signature(real).bind(api, *args, **kwargs)  # vlmrl.hub calls the real API correctly
            self.calls.append(name)
            if self.fault is not None:
                self.fault(name)
            return fake(*args, **kwargs)

        return method

    def repo_dir(self, repo_id: str, repo_type: str | None = None, revision: str | None = None) -> Path:
        return self.root / (repo_type or "model") / repo_id / (revision or "main").replace("/", "%2F")

    def files(self, repo_id: str, repo_type: str | None = None, revision: str | None = None) -> dict[str, bytes]:
        folder = self.repo_dir(repo_id, repo_type, revision)
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    def create_repo(self, repo_id, *, repo_type=None, exist_ok=False, **_):
        main = self.repo_dir(repo_id, repo_type)
        if main.exists() and not exist_ok:
            raise http_error(409)
        main.mkdir(parents=True, exist_ok=True)
        (main / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
        prefix = "" if repo_type in (None, "model") else f"{repo_type}s/"
        return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

    def create_branch(self, repo_id, *, branch, revision=None, repo_type=None, exist_ok=False, **_):
        source, target = self.repo_dir(repo_id, repo_type, revision), self.repo_dir(repo_id, repo_type, branch)
        if not source.exists():
            raise http_error(404)
        if target.exists():
            if not exist_ok:
                raise http_error(409)
            return
        shutil.copytree(source, target)

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None, **_):
        if not self.repo_dir(repo_id, repo_type, revision).exists():
            raise http_error(404)
        return list(self.files(repo_id, repo_type, revision))

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, **_):
        path = self.repo_dir(repo_id, repo_type, revision) / filename
        if not path.is_file():
            raise http_error(404, RemoteEntryNotFoundError)
        return str(path)

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, revision=None, **_):
        """Atomic like the Hub's: the new tree is built aside and replaces the old one only when complete."""
        folder = self.repo_dir(repo_id, repo_type, revision)
        if not folder.exists():
            raise http_error(404)
        staging = folder.with_name(folder.name + ".staging")
        shutil.copytree(folder, staging)
        uploaded = 0
        try:
            for op in operations:
                if isinstance(op, CommitOperationDelete):
                    (staging / op.path_in_repo).unlink()
                    continue
                if self.fail_upload is not None and uploaded >= self.fail_upload[0]:
                    raise self.fail_upload[1]
                target = staging / op.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as f:
                    target.write_bytes(f.read())
                uploaded += 1
        except BaseException:
            shutil.rmtree(staging)
            raise
        shutil.rmtree(folder)
        staging.rename(folder)
        self.commits.append({"repo_id": repo_id, "revision": revision or "main", "message": commit_message,
                             "paths": [op.path_in_repo for op in operations]})

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, repo_type=None, revision=None,
                      commit_message=None, allow_patterns=None, ignore_patterns=None, delete_patterns=None, **_):
        """The real upload_folder's selection (patterns, deletions) over the fake's create_commit."""
        folder = Path(folder_path)
        prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        ignore = [*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]
        additions = [CommitOperationAdd(prefix + rel, folder / rel)
                     for rel in filter_repo_objects(local, allow_patterns=allow_patterns, ignore_patterns=ignore)]
        added = {op.path_in_repo for op in additions}
        deletions = []
        if delete_patterns:
            remote = [f[len(prefix):] for f in self.files(repo_id, repo_type, revision) if f.startswith(prefix)]
            deletions = [CommitOperationDelete(prefix + rel)
                         for rel in filter_repo_objects(remote, allow_patterns=delete_patterns)
                         if prefix + rel not in added and prefix + rel != ".gitattributes"]
        return self.create_commit(repo_id, [*deletions, *additions], commit_message=commit_message or "",
                                  repo_type=repo_type, revision=revision)


@pytest.fixture(autouse=True)
def no_network(request, monkeypatch):
    """Any HTTP request from a unit test fails the test (the Hub is unreachable here and in CI)."""
    if request.node.get_closest_marker("integration"):
        return

    def refuse(*_args, **_kwargs):
        raise AssertionError("a unit test tried to reach the network")

    monkeypatch.setattr(httpx2.Client, "send", refuse)
    monkeypatch.setattr(httpx2.AsyncClient, "send", refuse)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    """The fake Hub installed, a token set, offline mode off; ``datasets.load_dataset`` reads its repos."""
    fake = FakeHub(tmp_path / "hub")
    fake.install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cache = str(tmp_path / "datasets-cache")

    def load_dataset(path, name=None, *args, revision=None, **kwargs):
        served = fake.repo_dir(path, "dataset", revision)
        if not Path(path).exists() and served.is_dir():
            # What the Hub serves for that repo and revision, cached per commit as datasets caches a Hub
            # repo per commit sha (a local folder's cache key ignores its files: it would serve stale rows).
            path, revision = str(served), None
            kwargs["cache_dir"] = f"{cache}/commit-{len(fake.commits)}"
        kwargs.setdefault("cache_dir", cache)
        return REAL_LOAD_DATASET(path, name, *args, revision=revision, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return fake


def make_episodes(folder: Path, iteration: int, episodes: int = 2, steps: int = 3) -> Path:
    """A small episodes dataset in vlmrl's layout: a shard per episode, a card, a summary."""
    rng = np.random.default_rng(iteration)
    for e in range(episodes):
        rows = [
            {"episode_id": e, "step": t, "frame": Image.fromarray(rng.integers(0, 255, (8, 6, 3), dtype=np.uint8)),
             "action": ["NOOP", "RIGHT", "LEFT"][(t + iteration) % 3], "reward": float(t == steps - 1) - 1.0 * e,
             "iteration": iteration}
            for t in range(steps)
        ]
        write_shard(folder, f"episode-{e:06d}", rows, FEATURES)
    write_dataset_card(folder, title="vlmrl episodes: ALE/Pong-v5, random policy",
                       body=f"Episodes of ALE/Pong-v5 played by the random policy (iteration {iteration}).",
                       tags=["episodes"])
    write_json(meta_path(folder, "summary.json"), {"episodes": episodes, "iteration": iteration})
    return folder


def fingerprint(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(dataset) -> list[tuple]:
    return [(r["episode_id"], r["step"], r["action"], r["iteration"], np.asarray(r["frame"]).tobytes())
            for r in dataset]


# ---------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("user/name", ("user/name", None, None)),
        ("user/name:iteration-2", ("user/name", "iteration-2", None)),
        ("user/name:iteration-2@v1.0", ("user/name", "iteration-2", "v1.0")),
        ("user/name@refs/pr/3", ("user/name", None, "refs/pr/3")),
        ("data/experiments/x/iteration_1/episodes", ("data/experiments/x/iteration_1/episodes", None, None)),
        ("/abs/path", ("/abs/path", None, None)),
    ],
)
def test_parse_dataset_reference(reference, expected):
    assert parse_dataset_reference(reference) == expected


def test_an_existing_local_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user" / "name:iteration-2").mkdir(parents=True)
    assert parse_dataset_reference("user/name:iteration-2") == ("user/name:iteration-2", None, None)
    assert hub_id("user/name:iteration-2") is None


def test_hub_repo_ids_from_a_prefix():
    assert hub_repo_id("user/pong", "episodes") == "user/pong-episodes"
    assert hub_repo_id("user/pong", "reflections") == "user/pong-reflections"
    assert hub_repo_id("user/pong", "checkpoint") == "user/pong"
    with pytest.raises(ValueError, match="unknown output kind"):
        hub_repo_id("user/pong", "frames")


# ---------------------------------------------------------------------------------------------- datasets


def test_a_pushed_dataset_is_what_the_next_phase_loads(fake_hub, tmp_path):
    first = make_episodes(tmp_path / "it1" / "episodes", iteration=1)
    url = push_dataset_dir(first, EPISODES_REPO, config_name="iteration-1")
    assert url == f"https://huggingface.co/datasets/{EPISODES_REPO}"
    served = fake_hub.files(EPISODES_REPO, "dataset")
    assert {"README.md", "iteration-1/episode-000000.parquet", "iteration-1/episode-000001.parquet",
            "iteration-1/.vlmrl/summary.json"} <= set(served)
    assert [c["message"] for c in fake_hub.commits] == ["vlmrl: iteration-1 (2 shards from episodes)"]

    # What was uploaded is what datasets understands: the config named in the README's YAML.
    snapshot = str(fake_hub.repo_dir(EPISODES_REPO, "dataset"))
    local = load_any(str(first))
    served_rows = REAL_LOAD_DATASET(snapshot, "iteration-1", split="train", cache_dir=str(tmp_path / "c1"))
    assert rows(served_rows) == rows(local)
    assert rows(load_dataset_reference(f"{EPISODES_REPO}:iteration-1")) == rows(local)

    second = make_episodes(tmp_path / "it2" / "episodes", iteration=2, episodes=1)
    push_dataset_dir(second, EPISODES_REPO, config_name="iteration-2")
    assert datasets.get_dataset_config_names(snapshot) == ["iteration-1", "iteration-2"]
    assert rows(load_dataset_reference(f"{EPISODES_REPO}:iteration-2")) == rows(load_any(str(second)))
    assert rows(load_dataset_reference(f"{EPISODES_REPO}:iteration-1")) == rows(local)

    card = DatasetCard.load(fake_hub.repo_dir(EPISODES_REPO, "dataset") / "README.md")
    assert card.data.configs == [
        {"config_name": f"iteration-{i}", "data_files": [{"split": "train", "path": f"iteration-{i}/*.parquet"}]}
        for i in (1, 2)
    ]
    assert {"vlmrl", "atari", "episodes"} <= set(card.data.tags)
    assert card.data.pretty_name == "vlmrl episodes: ALE/Pong-v5, random policy"
    # The local cards' bodies, one section per iteration, under the title.
    assert card.text.index("# vlmrl episodes") < card.text.index("## iteration-1") < card.text.index("## iteration-2")
    assert "played by the random policy (iteration 1)" in card.text
    assert "played by the random policy (iteration 2)" in card.text


def test_a_repush_replaces_its_config_and_keeps_the_rest(fake_hub, tmp_path):
    first = make_episodes(tmp_path / "it1", iteration=1, episodes=2)
    push_dataset_dir(first, EPISODES_REPO, config_name="iteration-1")
    push_dataset_dir(make_episodes(tmp_path / "it2", iteration=2), EPISODES_REPO, config_name="iteration-2")
    readme = fake_hub.repo_dir(EPISODES_REPO, "dataset") / "README.md"
    readme.write_text(readme.read_text() + "\nNotes the owner added on the Hub.\n")

    (first / "data" / "episode-000001.parquet").unlink()  # the collection was redone with one episode
    push_dataset_dir(first, EPISODES_REPO, config_name="iteration-1")
    served = fake_hub.files(EPISODES_REPO, "dataset")
    assert sorted(f for f in served if f.startswith("iteration-1/")) == [
        "iteration-1/.vlmrl/summary.json", "iteration-1/episode-000000.parquet"]
    assert "iteration-2/episode-000001.parquet" in served
    card = DatasetCard.load(readme)
    assert [c["config_name"] for c in card.data.configs] == ["iteration-1", "iteration-2"]
    assert card.text.count("## iteration-1") == 1
    assert "Notes the owner added on the Hub." in card.text


def test_a_repo_id_with_a_config_is_refused(fake_hub, tmp_path):
    with pytest.raises(ValueError, match="repo id alone"):
        push_dataset_dir(make_episodes(tmp_path / "e", 1), f"{EPISODES_REPO}:iteration-1", config_name="iteration-1")
    with pytest.raises(FileNotFoundError, match="nothing to push"):
        push_dataset_dir(tmp_path / "missing", EPISODES_REPO, config_name="iteration-1")
    assert fake_hub.calls == []


# ---------------------------------------------------------------------------------------------- models


def make_checkpoint(folder: Path, weights: bytes, tmp_path: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"optimizer state")
    plot = tmp_path / "plots" / "reward_plot.png"
    plot.parent.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(plot)
    write_model_card(folder, reward_plot=plot, base_model="HuggingFaceTB/SmolVLM-Instruct", iteration=1,
                     datasets=[f"{EPISODES_REPO}:iteration-1", "data/local/reflections"], repo_id=MODEL_REPO)
    return folder


def test_model_card_says_what_the_model_is(tmp_path):
    card = model_card(
        base_model="HuggingFaceTB/SmolVLM-Instruct", iteration=2, repo_id=MODEL_REPO,
        datasets=["user/pong-reflections:iteration-2", "data/experiments/x/iteration_2/reflections"],
        recipe={"learning_rate": 1e-4, "num_train_epochs": 2}, train_metrics={"loss": 0.4321, "samples": 800},
        eval_results={"game": "ALE/Pong-v5", "episodes": 5, "mean_return": -19.4, "std_return": 1.2,
                      "ci95": [-20.3, -18.5], "oracle_agreement": 0.41, "returns": [-20] * 5},
        reward_plot="reward_plot.png",
    )
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolVLM-Instruct"
    assert data.datasets == ["user/pong-reflections"]  # local paths are named in the body only
    assert {"vlmrl", "reinforcement-learning", "pong"} <= set(data.tags)
    assert {(e.metric_type, e.metric_value) for e in data.eval_results} == {
        ("mean_reward", -19.4), ("std_reward", 1.2), ("oracle_agreement", 0.41)}
    assert all(e.dataset_type == "ALE/Pong-v5" for e in data.eval_results)
    assert "![Return per iteration](reward_plot.png)" in card.text
    assert "learning_rate: 0.0001" in card.text and "| loss | 0.4321 |" in card.text
    assert "`data/experiments/x/iteration_2/reflections`" in card.text
    assert 'revision="iteration-2"' in card.text
    assert ModelCard(str(card)).data.eval_results == data.eval_results  # the YAML round-trips


def test_eval_results_go_into_a_local_card(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", b"w1", tmp_path)
    results = tmp_path / "results.json"
    write_json(results, {"model": str(checkpoint), "game": "ALE/Pong-v5", "episodes": 3, "mean_return": -20.0,
                         "std_return": 0.5, "invalid_rate": 0.1})
    add_eval_results_to_card(checkpoint, results)
    add_eval_results_to_card(checkpoint, {"game": "ALE/Pong-v5", "episodes": 9, "mean_return": -18.0})
    card = ModelCard.load(checkpoint / "README.md")
    # The later evaluation replaces the earlier one whole; the rest of the card stays.
    assert [(e.metric_type, e.metric_value) for e in card.data.eval_results] == [("mean_reward", -18.0)]
    assert card.text.count("## Evaluation") == 1 and "| mean_return | -18 |" in card.text
    assert "![Return per iteration](reward_plot.png)" in card.text
    assert card.data.base_model == "HuggingFaceTB/SmolVLM-Instruct"


def test_checkpoints_go_to_a_branch_per_iteration_with_their_evaluation(fake_hub, tmp_path):
    first = make_checkpoint(tmp_path / "it1" / "checkpoint", b"weights-1", tmp_path)
    second = make_checkpoint(tmp_path / "it2" / "checkpoint", b"weights-2", tmp_path)
    assert (first / "reward_plot.png").is_file()  # copied beside the card that links it

    assert push_checkpoint(first, MODEL_REPO, revision="iteration-1") == f"https://huggingface.co/{MODEL_REPO}/tree/iteration-1"
    push_checkpoint(second, MODEL_REPO, revision="iteration-2")
    assert set(fake_hub.files(MODEL_REPO)) == {".gitattributes"}  # main is untouched
    for revision, weights in (("iteration-1", b"weights-1"), ("iteration-2", b"weights-2")):
        served = fake_hub.files(MODEL_REPO, revision=revision)
        assert served["model.safetensors"] == weights
        assert {"README.md", "config.json", "reward_plot.png"} <= set(served)
        assert not any(f.startswith("checkpoint-10/") for f in served)  # trainer state is not the model

    results = tmp_path / "it2" / "results.json"
    write_json(results, {"game": "ALE/Pong-v5", "episodes": 4, "mean_return": -17.5, "std_return": 2.0,
                         "oracle_agreement": 0.5})
    push_eval_results(MODEL_REPO, results, revision="iteration-2")
    push_eval_results(MODEL_REPO, {"game": "ALE/Pong-v5", "episodes": 8, "mean_return": -16.0},
                      revision="iteration-2")
    branch = fake_hub.repo_dir(MODEL_REPO, revision="iteration-2")
    card = ModelCard.load(branch / "README.md")
    assert [(e.metric_type, e.metric_value) for e in card.data.eval_results] == [("mean_reward", -16.0)]
    assert "![Return per iteration](reward_plot.png)" in card.text  # the body written at training time stays
    assert json.loads((branch / "results.json").read_text())["mean_return"] == -16.0
    assert "model-index" not in (fake_hub.repo_dir(MODEL_REPO, revision="iteration-1") / "README.md").read_text()

    # Re-pushing a checkpoint makes its branch a mirror of the folder again.
    (second / "config.json").unlink()
    push_checkpoint(second, MODEL_REPO, revision="iteration-2")
    assert "config.json" not in fake_hub.files(MODEL_REPO, revision="iteration-2")


def test_a_mean_of_checkpoints_is_published_on_its_own_branch_beside_its_score(fake_hub, tmp_path):
    from vlmrl.averaging import RECORD
    from vlmrl.experiment import phase_command

    make_checkpoint(tmp_path / "it2" / "checkpoint", b"weights-2", tmp_path)
    push_checkpoint(tmp_path / "it2" / "checkpoint", MODEL_REPO, revision="iteration-2")
    mean = make_checkpoint(tmp_path / "it2" / "policy", b"mean-weights", tmp_path)
    (mean / RECORD).write_text(json.dumps({"average": "1:2", "sources": []}))
    results = tmp_path / "it2" / "results.json"
    write_json(results, {"game": "ALE/Pong-v5", "episodes": 4, "mean_return": -3.0, "std_return": 2.0})
    hub.publish_evaluation(mean, MODEL_REPO, results, revision="iteration-2-mean")
    served = fake_hub.files(MODEL_REPO, revision="iteration-2-mean")
    assert served["model.safetensors"] == b"mean-weights" and RECORD in served
    assert json.loads(served["results.json"])["mean_return"] == -3.0
    # The checkpoint's own branch keeps its weights, and a checkpoint's evaluation uploads no weights.
    assert fake_hub.files(MODEL_REPO, revision="iteration-2")["model.safetensors"] == b"weights-2"
    uploads = fake_hub.calls.count("upload_folder")
    hub.publish_evaluation(tmp_path / "it2" / "checkpoint", MODEL_REPO, results, revision="iteration-2")
    assert fake_hub.calls.count("upload_folder") == uploads
    assert json.loads(fake_hub.files(MODEL_REPO, revision="iteration-2")["results.json"])["mean_return"] == -3.0
    # The loop names the branches: a mean's evaluation goes to iteration-k-mean.
    recipe = tmp_path / "recipe"
    shutil.copytree(Path(__file__).resolve().parent.parent / "recipes" / "tiny-smolvlm" / "pong", recipe)
    (recipe / "experiment.yaml").write_text("base_model: base\ngame: ALE/Pong-v5\naverage_checkpoints: '11:3'\n")
    for k, branch in ((11, "iteration-11"), (12, "iteration-12-mean")):
        cmd = phase_command("evaluate", exp_dir=tmp_path / "exp", recipe=recipe, k=k, overrides={"hub": "user/p"})
        assert cmd[cmd.index("--hub-revision") + 1] == branch


# ---------------------------------------------------------------------------------------------- faults


def test_a_5xx_mid_upload_loses_nothing_and_the_retry_command_finishes_the_push(fake_hub, tmp_path, capsys):
    push_dataset_dir(make_episodes(tmp_path / "it1", iteration=1), EPISODES_REPO, config_name="iteration-1")
    before_remote = fake_hub.files(EPISODES_REPO, "dataset")
    local = make_episodes(tmp_path / "it2" / "episodes", iteration=2)
    before_local = fingerprint(local)

    fake_hub.fail_upload = (1, http_error(503))
    with pytest.raises(HubPushError) as caught:
        push_dataset_dir(local, EPISODES_REPO, config_name="iteration-2")
    message = str(caught.value)
    command = f"python -m vlmrl.hub push-dataset {local} {EPISODES_REPO} --config iteration-2"
    assert caught.value.retry_command == command
    assert command in message and "server error (503)" in message
    assert f"local copy at {local} is intact" in message
    assert fingerprint(local) == before_local
    assert fake_hub.files(EPISODES_REPO, "dataset") == before_remote  # no half-pushed iteration-2

    fake_hub.fail_upload = None
    assert hub.main(shlex.split(command)[3:]) == 0
    assert f"pushed: https://huggingface.co/datasets/{EPISODES_REPO}" in capsys.readouterr().out
    assert "iteration-2/episode-000001.parquet" in fake_hub.files(EPISODES_REPO, "dataset")


def test_a_failed_checkpoint_push_names_its_retry(fake_hub, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt", b"w", tmp_path)
    before = fingerprint(checkpoint)
    fake_hub.fail_upload = (2, RuntimeError("Error while uploading 'model.safetensors' to the Hub."))
    fake_hub.fail_upload[1].__cause__ = http_error(502)  # how huggingface_hub wraps an LFS upload failure
    assert hub.main(["push-checkpoint", str(checkpoint), MODEL_REPO, "--revision", "iteration-2"]) == 3
    err = capsys.readouterr().err
    assert "server error (502)" in err
    assert f"python -m vlmrl.hub push-checkpoint {checkpoint} {MODEL_REPO} --revision iteration-2" in err
    assert fingerprint(checkpoint) == before
    assert "model.safetensors" not in fake_hub.files(MODEL_REPO, revision="iteration-2")


def test_offline_mode_fails_fast_with_the_retry_command(fake_hub, tmp_path, monkeypatch):
    local = make_episodes(tmp_path / "episodes", iteration=1)
    checkpoint = make_checkpoint(tmp_path / "ckpt", b"w", tmp_path)
    results = tmp_path / "results.json"
    write_json(results, {"game": "ALE/Pong-v5", "mean_return": -21.0})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = {
        "push-dataset": lambda: push_dataset_dir(local, EPISODES_REPO, config_name="iteration-1"),
        "push-checkpoint": lambda: push_checkpoint(checkpoint, MODEL_REPO, revision="iteration-1"),
        "push-eval": lambda: push_eval_results(MODEL_REPO, results, revision="iteration-1"),
    }
    for subcommand, attempt in attempts.items():
        with pytest.raises(HubPushError, match="HF_HUB_OFFLINE=1") as caught:
            attempt()
        assert f"python -m vlmrl.hub {subcommand} " in str(caught.value)
    with pytest.raises(HubPushError, match="Nothing local was changed") as caught:
        push_eval_results(MODEL_REPO, {"game": "ALE/Pong-v5", "mean_return": -21.0})
    assert f"python -m vlmrl.hub push-eval RESULTS_JSON {MODEL_REPO}" in str(caught.value)
    assert fake_hub.calls == []
    # Reading local data needs no Hub at all.
    assert len(load_dataset_reference(str(local))) == 6


def test_offline_reading_of_an_uncached_hub_dataset_says_why(fake_hub, monkeypatch):
    # As if HF_HUB_OFFLINE=1 had been set before the libraries read it at import.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 is set") as caught:
        load_dataset_reference("someone/never-downloaded:iteration-1")
    assert "tried to reach the network" not in str(caught.value)


def test_a_missing_token_is_reported_before_any_upload(fake_hub, tmp_path, monkeypatch):
    local = make_episodes(tmp_path / "episodes", iteration=1)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub, "get_token", lambda: None)  # nor a saved login
    with pytest.raises(HubPushError, match="no Hugging Face token") as caught:
        push_dataset_dir(local, EPISODES_REPO, config_name="iteration-1", private=True)
    assert "hf auth login" in str(caught.value)
    assert caught.value.retry_command.endswith("--config iteration-1 --private")
    assert fake_hub.calls == []


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (http_error(401), "rejected the token"),
        (http_error(403), "may not write"),
        (ConnectionError("Name or service not known"), "could not reach the Hub"),
        (httpx2.ConnectError("connection refused"), "could not reach the Hub"),
        (TimeoutError("timed out"), "could not reach the Hub"),
    ],
)
def test_hub_errors_become_push_errors(fake_hub, tmp_path, error, said):
    local = make_episodes(tmp_path / "episodes", iteration=1)

    def fail(name: str) -> None:
        if name == "create_repo":
            raise error

    fake_hub.fault = fail
    with pytest.raises(HubPushError, match=said) as caught:
        push_dataset_dir(local, EPISODES_REPO, config_name="iteration-1")
    assert caught.value.__cause__ is error
    assert "push-dataset" in str(caught.value)


def test_cli_help_and_user_errors(capsys, tmp_path):
    for subcommand, flag in (("push-dataset", "--config"), ("push-checkpoint", "--revision"),
                             ("push-eval", "--revision")):
        with pytest.raises(SystemExit) as exited:
            hub.main([subcommand, "--help"])
        assert exited.value.code == 0 and flag in capsys.readouterr().out
    assert hub.main(["push-dataset", str(tmp_path / "missing"), EPISODES_REPO, "--config", "iteration-1"]) == 2
    assert "nothing to push" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the real Hub


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="talks to the real Hub: set HF_TOKEN to run")
def test_round_trip_through_the_real_hub(tmp_path):
    api = HfApi()
    repo_id = f"{api.whoami()['name']}/vlmrl-integration-{uuid.uuid4().hex[:8]}"
    local = make_episodes(tmp_path / "episodes", iteration=1)
    try:
        push_dataset_dir(local, repo_id, config_name="iteration-1", private=True)
        loaded = load_dataset_reference(f"{repo_id}:iteration-1")
        assert rows(loaded) == rows(load_any(str(local)))
        checkpoint = make_checkpoint(tmp_path / "ckpt", b"w", tmp_path)
        push_checkpoint(checkpoint, repo_id, revision="iteration-1", private=True)
        push_eval_results(repo_id, {"game": "ALE/Pong-v5", "episodes": 1, "mean_return": -21.0},
                          revision="iteration-1")
        assert "model.safetensors" in api.list_repo_files(repo_id, revision="iteration-1")
    finally:
        api.delete_repo(repo_id, repo_type="dataset", missing_ok=True)
        api.delete_repo(repo_id, missing_ok=True)
