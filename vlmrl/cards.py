"""Dataset and model cards: what the Hub (and a local folder) shows of episodes, reflections and checkpoints.

A model card carries the recipe, the training metrics and every evaluation as model-index entries
(``results.json`` -> ``EvalResult``); a dataset card keeps one section per config (iteration).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    ModelCard,
    ModelCardData,
)

from vlmrl.observation import ObservationConfig
from vlmrl.references import hub_id

if TYPE_CHECKING:
    pass


CardT = TypeVar("CardT", DatasetCard, ModelCard)
EVAL_VIDEO = "evaluation.gif"  # the card's video, copied beside it from the evaluation



# ---------------------------------------------------------------------------------------------- cards


def empty_card(card_class: type[CardT]) -> CardT:
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


def drop_section(text: str, name: str) -> str:
    """The card body without its section ``name`` (between vlmrl markers); unchanged where there is none."""
    begin, end = _section_markers(name)
    return re.sub(r"\n*" + re.escape(begin) + r".*?" + re.escape(end) + r"\n?", "\n", text, flags=re.DOTALL)


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
    card = empty_card(DatasetCard)
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
{% if observation_section %}
{{ observation_section }}
{% endif %}
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
    """Puts ``results`` in the card's model-index (replacing the game's earlier ones) and Evaluation section.

    A capped evaluation (``max_steps`` in results.json) is refused: it is not the protocol's score.
    """
    if results.get("max_steps") is not None:
        raise ValueError(f"these results come from episodes capped at {results['max_steps']} steps, not the full "
                         "protocol: they are not published in a model card (evaluate again without --max-steps)")
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
    observation: ObservationConfig | None = None,
    model_path: str | None = None,
) -> ModelCard:
    """The card of checkpoint M(iteration): base model, training data, metrics, evaluation, reward plot, recipe.

    ``datasets`` are references (local paths or ``user/name:config``); Hub ones go into the YAML.
    ``reward_plot`` is a path relative to the card's folder (``write_model_card`` copies it there).
    ``observation`` (what the model was trained to see) adds how to build it from raw frames and act, loading
    the model from the Hub repo where there is one, else from ``model_path``.
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
        observation_section=observation_section(observation, game, repo_id=repo_id, revision=revision
                                                or f"iteration-{iteration}", model_path=model_path)
        if observation is not None else "",
    )
    card.text = re.sub(r"\n{3,}", "\n\n", card.text)
    return card


def describe_observation(observation: ObservationConfig, game: str) -> str:
    """What the model is shown each step, in words."""
    size = f"{observation.image_size}×{observation.image_size}"
    field = "the playfield, cropped from" if observation.crop else "the whole"
    resize = "nearest-neighbour (the ball stays a sharp block)" if observation.resample == "nearest" else "bilinear"
    if observation.encoding == "motion":
        return (f"Each step the model sees **one {size} image made of the last two raw frames** of {game} "
                f"({field} 210×160 frame, resized {resize}): red and blue (magenta) are the current frame's contrast "
                "with the background, green the previous frame's, so a moving ball shows as two offset blobs that say "
                "which way it moves. It was never shown a plain screenshot: give it this motion image.")
    frames = "the current raw frame" if observation.frames == 1 else f"the last {observation.frames} raw frames"
    return (f"Each step the model sees {frames} of {game}, each as its own {size} RGB image ({field} 210×160 "
            f"frame, resized {resize}), oldest first.")


_SNIPPET = """import ale_py
import gymnasium as gym

from vlmrl.games import get_game
from vlmrl.models import load_processor, load_vlm
from vlmrl.observation import ObservationConfig, encode_observation
from vlmrl.policies.base import Observation
from vlmrl.policies.vlm import VLMPolicy

{load}
observation = ObservationConfig({config})  # what it was trained on
game = get_game("{game}")

gym.register_envs(ale_py)
env = gym.make("{game}")  # the v5 protocol: frameskip 4, sticky actions 0.25
frames = [env.reset(seed=0)[0]]  # raw 210x160 RGB frames, oldest first
while len(frames) < observation.frames:
    frames.append(env.step(0)[0])

images = encode_observation(frames, observation, game)  # the image(s) the model is shown
images[0].save("observation.png")

policy = VLMPolicy(load_vlm(model), load_processor(model, observation), game,
                   env.unwrapped.get_action_meanings(), observation)
decision = policy.act([Observation(frames, ram=env.unwrapped.ale.getRAM())])[0]
print(decision.action)
"""


def observation_snippet(observation: ObservationConfig, game: str, *, repo_id: str | None = None,
                        revision: str | None = None, model_path: str | None = None) -> str:
    """Python that builds the observation from raw frames (``encode_observation``) and gets an action."""
    if repo_id:
        load = (f'from huggingface_hub import snapshot_download\n\n'
                f'model = snapshot_download("{repo_id}", revision="{revision or "main"}")')
    else:
        load = f'model = "{model_path or "path/to/this/checkpoint"}"'
    config = ", ".join(f"{k}={v!r}" for k, v in asdict(observation).items())
    return _SNIPPET.format(load=load, config=config, game=game)


def observation_section(observation: ObservationConfig, game: str, *, repo_id: str | None = None,
                        revision: str | None = None, model_path: str | None = None) -> str:
    """The card's "What the model sees" section: in words, and as code that builds it and acts (the
    constrained decoding the recipes use: the legal action names scored in one forward pass)."""
    code = observation_snippet(observation, game, repo_id=repo_id, revision=revision, model_path=model_path)
    return (f"## What the model sees\n\n{describe_observation(observation, game)}\n\n"
            f"Build the observation from raw frames and get an action (`pip install -e .` of vlmrl):\n\n"
            f"```python\n{code}```\n")


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
    card = ModelCard.load(path) if path.exists() else empty_card(ModelCard)
    results = read_results(results)
    merge_eval_results(card, results)
    video = results.get("video")
    if video and Path(video).is_file():
        # Copied beside the card: a relative link renders on the Hub and in a local viewer alike.
        shutil.copyfile(video, path.parent / EVAL_VIDEO)
        card.text = upsert_section(card.text, "video", f"## Playing\n\n![An evaluation episode: the action played "
                                   f"(green where the oracle agrees), the oracle's action and the score]({EVAL_VIDEO})")
    card.save(path)
    return card


def read_results(results: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(results, Mapping):
        return dict(results)
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist (evaluate.py writes results.json)")
    return json.loads(path.read_text())


