"""The evaluation record shared by every policy: results.json, its statistics and reference scores."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.env import game_name

# (random, human) episode returns from the Atari-57 literature tables (Mnih et al. 2015,
# Badia et al. 2020 "Agent57", as used by rliable and the Atari 100k benchmark).
HUMAN_RANDOM_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Enduro": (0.0, 860.5),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "SpaceInvaders": (148.0, 1668.7),
    "UpNDown": (533.4, 11693.2),
}

# The keys of results.json, in the order DESIGN.md lists them.
RESULTS_KEYS: tuple[str, ...] = (
    "model",
    "game",
    "policy",
    "episodes",
    "seeds",
    "returns",
    "mean_return",
    "std_return",
    "ci95",
    "human_normalized",
    "oracle_agreement",
    "invalid_rate",
    "env_steps",
    "steps_per_s",
    "video",
)
# Keys a results.json may hold beyond the required ones (older records lack them).
# ``videos``: the filmed episodes' GIFs, where some were. ``max_steps``: the cap on agent steps per episode
# when the evaluation had one (absent: the game's own episodes, the full protocol); a capped score is never
# published as the protocol's.
OPTIONAL_RESULTS_KEYS: tuple[str, ...] = ("oracle_agreement_by_phase", "videos", "max_steps")
# Beside results.json, the settings of the evaluation that wrote it (``check_results_owner``).
EVALUATION_RECORD = ".vlmrl/evaluation.json"
_EVALUATION_KEYS = ("model", "policy", "game", "episodes", "first_episode", "max_steps", "seed", "decode",
                    "temperature", "frameskip", "repeat_action_probability", "frames", "encoding", "crop",
                    "image_size", "resample")

# Collections seed episode i of a run with seed + i, seeds below this: evaluation never reuses them.
EVAL_SEED_OFFSET = 1_000_000


class ResultsSchemaError(ValueError):
    """A results.json that lacks a key or holds a value of the wrong kind."""


def game_slug(game_id: str) -> str:
    """A directory name for a game id: 'ALE/Pong-v5' -> 'pong-v5'."""
    name = game_id.split("/")[-1]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def human_normalized(game_id: str, mean_return: float) -> float | None:
    """(return - random) / (human - random), 1.0 = human level; None for a game not in the table."""
    scores = HUMAN_RANDOM_SCORES.get(game_name(game_id))
    if scores is None:
        return None
    random_score, human_score = scores
    return (float(mean_return) - random_score) / (human_score - random_score)


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values`` (``scipy.stats.bootstrap``).

    Percentile rather than BCa: with 10 episodes of Pong returns are often tied or constant, where
    BCa's acceleration estimate is undefined and scipy returns NaN; the percentile interval is the
    one rliable and the Atari-100k tables report.
    """
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if data.size == 1 or np.all(data == data[0]):
        # Every resample has the same mean (scipy would warn of a degenerate distribution): the interval is that point.
        return float(data.mean()), float(data.mean())
    result = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                       method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def eval_seeds(episodes: int, first: int = 0) -> list[int]:
    """Seeds of the evaluation episodes, disjoint from every collection seed (``first`` > 0: other held-out games
    than the protocol's, from the ``first``-th on)."""
    if episodes < 1:
        raise ValueError(f"evaluation needs at least one episode, got {episodes}")
    return [EVAL_SEED_OFFSET + first + i for i in range(episodes)]


def _fraction(name: str, value: float | None, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ResultsSchemaError(f"{name} must be a number in [0, 1], got None")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ResultsSchemaError(f"{name} must lie in [0, 1], got {value}")
    return value


def build_results(
    *,
    model: str,
    game: str,
    policy: str,
    seeds: Sequence[int],
    returns: Sequence[float],
    oracle_agreement: float | None,
    invalid_rate: float,
    env_steps: int,
    steps_per_s: float,
    video: str | None,
    oracle_agreement_by_phase: dict[str, dict] | None = None,
    videos: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The results.json record of one evaluation: one return per seeded episode plus its statistics.

    ``oracle_agreement_by_phase`` maps a phase of play to ``{"agreement": fraction or None, "steps": n}``;
    ``videos`` lists every filmed episode's GIF (``video`` is the first of them).
    """
    if len(returns) == 0:
        raise ResultsSchemaError("an evaluation needs at least one episode's return, got none")
    if len(seeds) != len(returns):
        raise ResultsSchemaError(f"one seed per episode: got {len(seeds)} seeds for {len(returns)} returns")
    returns_list = [float(r) for r in returns]
    mean_return = float(np.mean(returns_list))
    low, high = bootstrap_ci(returns_list)
    return {
        "model": str(model),
        "game": str(game),
        "policy": str(policy),
        "episodes": len(returns_list),
        "seeds": [int(s) for s in seeds],
        "returns": returns_list,
        "mean_return": mean_return,
        "std_return": float(np.std(returns_list)),
        "ci95": [low, high],
        "human_normalized": human_normalized(game, mean_return),
        "oracle_agreement": _fraction("oracle_agreement", oracle_agreement, allow_none=True),
        "invalid_rate": _fraction("invalid_rate", invalid_rate, allow_none=False),
        "env_steps": int(env_steps),
        "steps_per_s": float(steps_per_s),
        "video": None if video is None else str(video),
        "oracle_agreement_by_phase": _by_phase(oracle_agreement_by_phase),
        **({"videos": [str(v) for v in videos]} if videos else {}),
    }


def _by_phase(split: dict[str, dict] | None) -> dict[str, dict] | None:
    if split is None:
        return None
    out = {}
    for phase, entry in split.items():
        if set(entry) != {"agreement", "steps"}:
            raise ResultsSchemaError(f"oracle_agreement_by_phase[{phase!r}] needs agreement and steps, got {entry}")
        out[str(phase)] = {"agreement": _fraction(f"oracle_agreement_by_phase[{phase!r}]", entry["agreement"],
                                                  allow_none=True),
                           "steps": int(entry["steps"])}
    return out


def validate_results(results: Any, source: str = "results") -> dict[str, Any]:
    """Check a results record has every results.json key with values of the right kind."""
    if not isinstance(results, dict):
        raise ResultsSchemaError(f"{source}: expected a JSON object, got {type(results).__name__}")
    missing = [key for key in RESULTS_KEYS if key not in results]
    if missing:
        raise ResultsSchemaError(
            f"{source}: not a results.json record, missing keys {missing} "
            f"(expected {list(RESULTS_KEYS)}; write it with vlmrl.results.build_results)"
        )
    if not isinstance(results["returns"], list) or not isinstance(results["seeds"], list):
        raise ResultsSchemaError(f"{source}: 'returns' and 'seeds' must be lists")
    if len(results["returns"]) != len(results["seeds"]):
        raise ResultsSchemaError(
            f"{source}: {len(results['seeds'])} seeds for {len(results['returns'])} returns"
        )
    mean_return = results["mean_return"]
    if not isinstance(mean_return, int | float) or not math.isfinite(mean_return):
        raise ResultsSchemaError(f"{source}: 'mean_return' must be a finite number, got {mean_return!r}")
    ci95 = results["ci95"]
    if not isinstance(ci95, list) or len(ci95) != 2:
        raise ResultsSchemaError(f"{source}: 'ci95' must be [low, high], got {ci95!r}")
    extra = sorted(set(results) - set(RESULTS_KEYS) - set(OPTIONAL_RESULTS_KEYS))
    if extra:
        # Newer writers may add keys; readers here only rely on the documented ones.
        warnings.warn(f"{source}: keys outside the results.json schema ignored: {extra}", stacklevel=2)
    return results


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Validate and write a results record as JSON, creating parent directories."""
    path = Path(path)
    validate_results(results, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json and check it has the schema's keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}: run the evaluation that writes it first")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsSchemaError(f"{path}: not valid JSON ({error})") from error
    return validate_results(results, str(path))


def agreement_by_phase(agrees: Sequence[bool], phases: Sequence[str], names: Sequence[str]) -> dict[str, dict]:
    """Per phase name: the share of its steps that agree (None without steps) and their count."""
    if len(agrees) != len(phases):
        raise ValueError(f"one phase per step: got {len(agrees)} steps and {len(phases)} phases")
    split = {}
    for phase in names:
        hits = [agree for agree, p in zip(agrees, phases, strict=True) if p == phase]
        split[phase] = {"agreement": sum(hits) / len(hits) if hits else None, "steps": len(hits)}
    return split


def evaluation_settings(args: Any) -> dict[str, Any]:
    """What makes two evaluations the same run (an ``EvaluateArguments``): the model, the protocol, the cap."""
    settings = {key: getattr(args, key, None) for key in _EVALUATION_KEYS}
    if settings["policy"] != "model":
        settings["model"] = settings["policy"]  # what results.json records as the model of a baseline policy
    return settings


def check_results_owner(output_dir: str | Path, settings: dict[str, Any]) -> None:
    """Refuses to overwrite a results.json another evaluation wrote (another model, protocol or cap); the same
    run again may overwrite it. Results without a settings record are compared on what they hold."""
    changed = results_owner_changes(output_dir, settings)
    if changed:
        details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"{Path(output_dir) / 'results.json'} holds another evaluation's results ({details}); use "
                         "another --output-dir, or delete it to replace them")


def results_owner_changes(output_dir: str | Path, settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """How ``settings`` differ from those of the evaluation that wrote ``output_dir``'s results.json
    (``{key: (recorded, given)}``; empty when there is none or it is the same run)."""
    import json

    from vlmrl.data import changed_settings

    path = Path(output_dir) / "results.json"
    if not path.exists():
        return {}
    record = Path(output_dir) / EVALUATION_RECORD
    try:
        previous = json.loads(record.read_text()) if record.exists() else None
        if previous is None:
            held = json.loads(path.read_text())
            previous = {"model": held.get("model"), "policy": held.get("policy"), "game": held.get("game"),
                        "episodes": held.get("episodes")}
            if "max_steps" in held:
                previous["max_steps"] = held["max_steps"]
    except (OSError, ValueError, AttributeError):
        raise ValueError(f"{path} exists but cannot be read; move it away or use another --output-dir") from None
    return changed_settings(previous, settings)


def record_results_owner(output_dir: str | Path, settings: dict[str, Any]) -> None:
    """Writes the settings of the evaluation that wrote ``output_dir``'s results.json beside it."""
    from vlmrl.data import write_json

    write_json(Path(output_dir) / EVALUATION_RECORD, settings)
