"""The loop: paths of an experiment, the command of each phase, and the experiment's summary.

The Makefile calls ``python -m vlmrl.experiment phase <name> ...`` for each file target, so
each phase is exactly the script a user would run by hand (the command is printed), and
``summarize`` / ``report`` build ``experiment_summary.json``, the plot and the table
(``vlmrl.report``).

    data/experiments/<exp>/iteration_0/results.json           the base model's evaluation
    data/experiments/<exp>/iteration_<k>/{episodes,reflections,checkpoint,results.json}

``make experiment EVAL_EVERY=e`` evaluates only every e-th iteration and the last (the Makefile's loop): the
others have no results.json, and the summary's entry for them has ``"eval": null``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

from vlmrl.averaging import POLICY_DIR, average_checkpoints, average_window, parse_average
from vlmrl.cli import ArgumentParser, run
from vlmrl.references import hub_repo_id

PHASES = ("collect", "reflect", "train", "evaluate")
OBSERVATION_KEYS = ("frames", "encoding", "crop", "image_size", "resample")
ROOT = Path(__file__).resolve().parent.parent


def experiment_dir(exp: str, root: str | Path = "data/experiments") -> Path:
    return Path(root) / exp


def iteration_dir(exp_dir: Path, k: int) -> Path:
    return exp_dir / f"iteration_{k}"


def recipe_settings(recipe: str | Path) -> dict:
    """The recipe's experiment.yaml (base model, game, iterations, reflections window)."""
    from vlmrl.cli import read_recipe

    path = Path(recipe) / "experiment.yaml"
    if not Path(recipe).is_dir():
        raise FileNotFoundError(f"recipe folder {str(recipe)!r} does not exist (e.g. recipes/tiny-smolvlm/pong)")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a recipe folder holds experiment.yaml and one YAML per phase")
    settings = read_recipe(path)
    if not isinstance(settings.get("base_model"), str) or not settings["base_model"]:
        raise ValueError(f"{path} must name base_model (a path or Hub id)")
    missing = [f"{phase}.yaml" for phase in PHASES if not (Path(recipe) / f"{phase}.yaml").exists()]
    if missing:
        raise FileNotFoundError(f"recipe folder {recipe} lacks {', '.join(missing)}")
    settings.setdefault("game", "ALE/Pong-v5")
    for phase in PHASES:
        named = (read_recipe(Path(recipe) / f"{phase}.yaml") or {}).get("game")
        if named is not None and named != settings["game"]:
            raise ValueError(f"recipe {recipe}: {phase}.yaml names game {named!r} but experiment.yaml names "
                             f"{settings['game']!r}; one recipe plays one game")
    settings.setdefault("reflections_window", 1)
    observation = settings.setdefault("observation", {}) or {}
    unknown = set(observation) - set(OBSERVATION_KEYS)
    if not isinstance(observation, dict) or unknown:
        raise ValueError(f"{path}: observation must be a mapping of {', '.join(OBSERVATION_KEYS)}; got {observation!r}")
    settings["observation"] = observation
    settings.setdefault("seed", 0)
    for key, (_, parse, _) in SCHEDULES.items():
        if settings.get(key) is not None:
            try:
                settings[key] = parse(settings[key])
            except ValueError as err:
                raise ValueError(f"{path}: {key}: {err}") from None
    try:
        parse_average(settings.setdefault("average_checkpoints", 1))
    except ValueError as err:
        raise ValueError(f"{path}: average_checkpoints: {err}") from None
    window = settings["reflections_window"]
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{path}: reflections_window must be a whole number >= 1, got {window!r}")
    return settings


def parse_schedule(raw, *, unit: str, example: str, value: str, allowed) -> dict[int, float]:
    """Iteration:value steps across iterations: ``"11:3e-4"`` (or ``{11: 3.0e-4}`` in experiment.yaml) means
    iteration 11 and every later one take that value; several steps ``"6:5e-4,11:3e-4"``; ``"none"`` (or empty)
    names no step. ``allowed`` says which values are; ``unit``, ``example`` and ``value`` word the refusal."""
    if isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        text = str(raw).strip()
        if text.lower() in ("", "none"):
            return {}
        pairs = [part.split(":", 1) if ":" in part else (part, None) for part in text.split(",")]
    schedule: dict[int, float] = {}
    for key, given in pairs:
        try:
            k, number = int(str(key).strip()), float(str(given).strip())
        except ValueError:
            raise ValueError(f"expected iteration:{unit} pairs such as {example}, got {raw!r}") from None
        if k < 2 or str(key).strip() != str(k) or not allowed(number) or k in schedule:
            raise ValueError(f"each step is a distinct iteration >= 2 and {value}, got {raw!r}")
        schedule[k] = number
    return dict(sorted(schedule.items()))


def parse_lr_schedule(raw) -> dict[int, float]:
    """A learning rate that changes across iterations: ``"11:3e-4"`` means each iteration from the 11th on starts
    its cosine at 3e-4; iterations before the first one named keep train.yaml's rate (or LR's)."""
    return parse_schedule(raw, unit="rate", example="11:3e-4 or 6:5e-4,11:3e-4", value="a rate between 0 and 1",
                          allowed=lambda rate: 0 < rate < 1)


def parse_mix_schedule(raw) -> dict[int, float]:
    """A teacher mix that changes across iterations: ``"11:0"`` means the oracle plays no collection step from
    iteration 11 on; iterations before the first one named keep collect.yaml's mix (or TEACHER_MIX's)."""
    return parse_schedule(raw, unit="share", example="11:0 or 6:0.25,11:0", value="a share from 0 to 1",
                          allowed=lambda share: 0 <= share <= 1)


def scheduled(schedule: dict[int, float], k: int) -> float | None:
    """The value iteration k takes under ``schedule``; None before its first step (the phase's own setting)."""
    named = [value for start, value in schedule.items() if start <= k]
    return named[-1] if named else None


SCHEDULES = {"lr_schedule": ("LR_SCHEDULE (--lr-schedule)", parse_lr_schedule, "lr"),
             "teacher_mix_schedule": ("TEACHER_MIX_SCHEDULE (--teacher-mix-schedule)", parse_mix_schedule,
                                      "teacher_mix")}


def apply_schedules(settings: dict, overrides: dict, k: int) -> None:
    """Sets ``overrides``' LR and TEACHER_MIX for iteration k from their schedules (the flag's, else the
    recipe's): a schedule's step wins over the constant from the iteration it names."""
    for key, (_, parse, knob) in SCHEDULES.items():
        schedule = parse(overrides[key]) if key in overrides else settings.get(key) or {}
        value = scheduled(schedule, k)
        if value is not None:
            overrides[knob] = repr(value)


MAX_SEED = 9  # collection seeds are 100,000 x seed + 1,000 x iteration + episode: below evaluation's 1,000,000


def experiment_seed(settings: dict, overrides: dict) -> int:
    """The experiment's seed: SEED (a flag) or the recipe's ``seed``; it moves every random source."""
    raw = overrides.get("seed", settings.get("seed", 0))
    try:
        seed = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"SEED must be a whole number from 0 to {MAX_SEED}, got {raw!r}") from None
    if not 0 <= seed <= MAX_SEED or str(raw).strip() != str(seed):
        raise ValueError(f"SEED must be a whole number from 0 to {MAX_SEED}, got {raw!r}")
    return seed


def observation_flags(settings: dict) -> list[str]:
    """The recipe's observation block as flags for every phase: one place says what the model sees
    (where the block is empty, each phase reads the model's own record)."""
    flags = []
    for key, value in settings["observation"].items():
        flags += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def average_spec(settings: dict, overrides: dict) -> tuple[int, int]:
    """(start, count) of AVERAGE, else of the recipe's ``average_checkpoints``; (1, 1) averages nothing."""
    raw = overrides.get("average", settings.get("average_checkpoints", 1))
    try:
        return parse_average(raw)
    except ValueError as err:
        raise ValueError(f"AVERAGE (--average): {err}") from None


def evaluated_window(settings: dict, overrides: dict, k: int) -> list[int]:
    """The iterations whose checkpoints' mean iteration k is evaluated as (AVERAGE or the recipe's
    ``average_checkpoints``); one iteration, k itself, where there is nothing to average."""
    start, last = average_spec(settings, overrides)
    return average_window(k, last, start)


def model_for(exp_dir: Path, k: int, base_model: str) -> str:
    """The model that plays iteration k: the base for k = 1, else iteration k-1's checkpoint."""
    return base_model if k <= 1 else str(iteration_dir(exp_dir, k - 1) / "checkpoint")


def phase_command(phase: str, *, exp_dir: Path, recipe: Path, k: int, overrides: dict) -> list[str]:
    """The command line of one phase of iteration k (k = 0: the base model's evaluation)."""
    settings = recipe_settings(recipe)
    o = {key: v for key, v in overrides.items() if v not in (None, "")}
    base = o.get("base_model") or settings["base_model"]
    it = iteration_dir(exp_dir, k)
    seed = experiment_seed(settings, o)
    py = [sys.executable]
    config = ["--config", str(recipe / f"{phase}.yaml")]
    hub = o.get("hub")
    apply_schedules(settings, o, k)
    if phase == "collect":
        cmd = [*py, str(ROOT / "collect.py"), *config, "--model", model_for(exp_dir, k, base),
               "--output-dir", str(it / "episodes"), "--iteration", str(k), "--seed", str(100_000 * seed + 1000 * k)]
        cmd += _flags(o, episodes="--episodes", max_steps="--max-steps", num_envs="--num-envs",
                      teacher_mix="--teacher-mix")
        if "teacher_mix" not in o and o.get("reflector", "oracle") != "oracle":
            # Learning without the oracle: it corrects no step, so it plays none either (TEACHER_MIX says otherwise).
            cmd += ["--teacher-mix", "0"]
        if hub:
            cmd += ["--push-to-hub", hub_repo_id(hub, "episodes")]
    elif phase == "reflect":
        cmd = [*py, str(ROOT / "reflect.py"), *config, "--episodes", str(it / "episodes"),
               "--output-dir", str(it / "reflections"), "--model", model_for(exp_dir, k, base), "--seed", str(seed)]
        cmd += _flags(o, reflection_rate="--reflection-rate", reflector="--reflector", outcome="--outcome",
                      advantage="--advantage")
        if hub:
            cmd += ["--push-to-hub", hub_repo_id(hub, "reflections")]
    elif phase == "train":
        window = int(settings["reflections_window"])
        reflections = [str(iteration_dir(exp_dir, j) / "reflections") for j in range(max(1, k - window + 1), k + 1)]
        launch = shlex.split(o["launch"]) if o.get("launch") else py
        cmd = [*launch, str(ROOT / "train.py"), *config, "--model_name_or_path", model_for(exp_dir, k, base),
               "--reflections", ",".join(reflections), "--output_dir", str(it / "checkpoint"),
               "--iteration", str(k), "--recipe", str(recipe), "--seed", str(seed)]
        cmd += _flags(o, epochs="--num_train_epochs", batch_size="--per_device_train_batch_size", lr="--learning_rate",
                      sample_budget="--sample-budget", rehearsal_share="--rehearsal-share", lora="--use_peft",
                      phase_weight="--phase-weight",
                      vision_head="--vision-head-weight", vision_head_at="--vision-head-at")
        if hub:
            cmd += ["--push_to_hub_repo", hub_repo_id(hub, "model")]
    elif phase == "evaluate":
        if k == 0:
            model = base
        else:
            model = str(it / (POLICY_DIR if len(evaluated_window(settings, o, k)) > 1 else "checkpoint"))
        cmd = [*py, str(ROOT / "evaluate.py"), *config, "--model", model, "--output-dir", str(it), "--seed", str(seed)]
        cmd += _flags(o, eval_episodes="--episodes", eval_max_steps="--max-steps")
        if hub and k > 0:  # a mean of checkpoints goes to its own branch: iteration-k holds checkpoint k's weights
            revision = f"iteration-{k}" + ("-mean" if model.endswith(POLICY_DIR) else "")
            cmd += ["--push-to-hub", hub_repo_id(hub, "model"), "--hub-revision", revision]
        if o.get("probe"):
            cmd += ["--probe", "vision"]
    else:
        raise ValueError(f"unknown phase {phase!r}: one of {PHASES}")
    # Every phase is told the experiment's game: a phase YAML that leaves it out would otherwise fall back
    # to Pong (a Breakout run once trained with Pong's action classes that way).
    return cmd + ["--game", settings["game"]] + observation_flags(settings)


def _flags(overrides: dict, **names: str) -> list[str]:
    out = []
    for key, flag in names.items():
        if key in overrides:
            out += [flag, str(overrides[key])]
    return out


def run_phase(phase: str, *, exp_dir: Path, recipe: Path, k: int, overrides: dict) -> None:
    cmd = phase_command(phase, exp_dir=exp_dir, recipe=recipe, k=k, overrides=overrides)
    if phase == "evaluate" and k > 0:
        start, last = average_spec(recipe_settings(recipe), {key: v for key, v in overrides.items()
                                                             if v not in (None, "")})
        window = average_window(k, last, start)
        if len(window) > 1:
            sources = [iteration_dir(exp_dir, j) / "checkpoint" for j in window]
            print(f"averaging the weights of iterations {window[0]}..{window[-1]} into "
                  f"{iteration_dir(exp_dir, k) / POLICY_DIR}", flush=True)
            average_checkpoints(sources, iteration_dir(exp_dir, k) / POLICY_DIR, note={"average": f"{start}:{last}"})
    env = dict(os.environ)
    if phase != "reflect":  # the Trainer's TensorBoard callback reads its folder from here, and so do collect/evaluate
        env["TENSORBOARD_LOGGING_DIR"] = str(exp_dir / "tensorboard" / f"{phase}_{k}")
    print("+ " + shlex.join(cmd), flush=True)
    result = subprocess.run(cmd, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(result.returncode)


# --- checking every phase's knobs before any phase runs ----------------------------------------------

# The dataclasses each phase's script parses its command line into (the same parse, without running).
def _phase_types(phase: str) -> tuple[tuple, dict | None]:
    if phase == "collect":
        from vlmrl.configs import CollectArguments

        return (CollectArguments,), None
    if phase == "reflect":
        from vlmrl.configs import ReflectArguments

        return (ReflectArguments,), None
    if phase == "train":
        from trl import ModelConfig, SFTConfig

        from vlmrl.training import TrainScriptArguments, cpu_defaults

        return (TrainScriptArguments, SFTConfig, ModelConfig), cpu_defaults()
    from vlmrl.configs import EvaluateArguments

    return (EvaluateArguments,), None


_MODEL_FLAGS = ("--model", "--model_name_or_path")
# Where a run's files are and how fast it went, not what it did: never a reason to refuse.
_NOT_COMPARED = ("output_dir", "progress", "push_to_hub", "prefetch_resets", "num_envs")


def parse_phase(phase: str, *, exp_dir: Path, recipe: Path, k: int, overrides: dict, base_model: str):
    """The phase's arguments exactly as its script would parse them (recipe YAML + flags), without running it.

    A model that an earlier phase has yet to write (iteration k-1's checkpoint) is stood in for by the base
    model, so the knobs are checked now; the model itself is checked when the phase runs.
    """
    from vlmrl.cli import parse

    cmd = phase_command(phase, exp_dir=exp_dir, recipe=recipe, k=k, overrides=overrides)
    at = next(i for i, part in enumerate(cmd) if part.endswith(f"{_script(phase)}"))
    argv = cmd[at + 1:]
    for i, part in enumerate(argv[:-1]):
        if part in _MODEL_FLAGS and argv[i + 1].startswith(str(exp_dir)) and not Path(argv[i + 1]).exists():
            argv[i + 1] = base_model
    types, defaults = _phase_types(phase)
    parsed = parse(types, argv, defaults=defaults, prog=_script(phase))
    if phase == "train":
        from vlmrl.training import validate_training_args

        validate_training_args(*parsed)
    return parsed


def _script(phase: str) -> str:
    return {"collect": "collect.py", "reflect": "reflect.py", "train": "train.py", "evaluate": "evaluate.py"}[phase]


def _read_json(path: Path) -> dict | None:
    import json

    try:
        value = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def recorded_changes(phase: str, parsed: tuple, it: Path) -> dict:
    """How the settings given now differ from those a phase of iteration folder ``it`` recorded when it ran
    (``{key: (recorded, given)}``; empty where it has not run or ran with these settings)."""
    from dataclasses import asdict

    from vlmrl.data import changed_settings, meta_path

    if phase == "collect":
        from vlmrl.collection import _RESUME_KEYS, MANIFEST, SUMMARY

        args = parsed[0]
        finished = (_read_json(meta_path(it / "episodes", SUMMARY)) or {}).get("settings")
        if finished:
            given = {k: v for k, v in asdict(args).items() if k not in _NOT_COMPARED}
            return changed_settings({k: v for k, v in finished.items() if k not in _NOT_COMPARED}, given)
        started = _read_json(meta_path(it / "episodes", MANIFEST)) or {}
        given = {k: getattr(args, k) for k in _RESUME_KEYS if k not in OBSERVATION_KEYS}
        return changed_settings(started, given)
    if phase == "reflect":
        from vlmrl.reflection import MANIFEST, recorded_settings

        return changed_settings(_read_json(meta_path(it / "reflections", MANIFEST)) or {},
                                recorded_settings(parsed[0]))
    if phase == "train":
        from vlmrl.training import MANIFEST, _json_value, train_settings

        given = {k: _json_value(v) for k, v in train_settings(*parsed).items()}
        return changed_settings(_read_json(meta_path(it / "checkpoint", MANIFEST)) or {}, given)
    from vlmrl.results import evaluation_settings, results_owner_changes

    return results_owner_changes(it, evaluation_settings(parsed[0]))


def _count(raw: str | None, name: str) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if value < 1 or str(raw).strip() != str(value):
        raise ValueError(f"{name} must be a whole number >= 1, got {raw!r}")
    return value


def check(*, exp_dir: Path, recipe: Path, overrides: dict, iterations: str, base_eval: bool = False,
          force: bool = False, eval_every: str = "1", loop_jobs: str = "1") -> list[str]:
    """Checks every phase of iterations 1..``iterations`` (and the base model's evaluation) before any runs:
    each phase's command parsed by its own dataclasses, so a bad knob of a late phase (``LR=abc``,
    ``EVAL_EPISODES=0``) is refused before collection starts. A finished (or started) phase whose recorded
    settings differ from those given is refused too, naming the keys, unless ``force``: then the differences
    are returned (and printed) and the finished phases are kept as they are. Returns the differences."""
    last = _count(iterations, "the iteration count (N or ITERATIONS)")
    _count(eval_every, "EVAL_EVERY (--eval-every: evaluate every k-th iteration and the last)")
    _count(loop_jobs, "LOOP_JOBS (--loop-jobs: phases run at once)")
    settings = recipe_settings(recipe)
    o = {key: v for key, v in overrides.items() if v not in (None, "")}
    base = o.get("base_model") or settings["base_model"]
    experiment_seed(settings, o)
    evaluated_window(settings, o, 1)
    for key, (name, parse, _) in SCHEDULES.items():
        if key in o:
            try:
                parse(o[key])
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
    plan = [(0, "evaluate")] if base_eval else []
    plan += [(k, phase) for k in range(1, last + 1) for phase in PHASES]
    differences = []
    for k, phase in plan:
        try:
            with warnings.catch_warnings():  # the phase itself says its warnings when it runs
                warnings.simplefilter("ignore")
                parsed = parse_phase(phase, exp_dir=exp_dir, recipe=recipe, k=k, overrides=o, base_model=base)
        except (ValueError, FileNotFoundError) as err:  # UsageError included
            raise type(err)(f"iteration {k} {phase} ({_script(phase)}): {err}") from None
        changed = recorded_changes(phase, parsed, iteration_dir(exp_dir, k))
        if changed:
            details = ", ".join(f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items())
            differences.append(f"iteration {k} {phase}: {details}")
    if differences and not force:
        raise ValueError(
            f"experiment {exp_dir.name!r} already ran with other settings ({'; '.join(differences)}); phases that "
            "ran are not redone: use a new EXP=<name> for the new settings, or FORCE=1 to keep what ran and run "
            "what is left with the new settings"
        )
    for line in differences:
        print(f"warning (FORCE): kept as it ran: {line}", flush=True)
    return differences


def branch(src_dir: Path, new_dir: Path, at: int) -> list[Path]:
    """A new experiment that starts as ``src_dir`` was after iteration ``at``: iterations 0..at copied with their
    timestamps (so make redoes nothing), and every record in them that names ``src_dir``'s folders rewritten to
    ``new_dir``'s (so the knobs' check compares like with like, without FORCE). An iteration the source ran or
    started after ``at`` is left behind. Written to a side folder first: an interrupted branch leaves nothing."""
    import shutil

    if not src_dir.is_dir():
        raise FileNotFoundError(f"no experiment at {src_dir} to branch from")
    if new_dir.exists():
        raise ValueError(f"{new_dir} already exists: branch into a new EXP name")
    trained = at == 0 or (iteration_dir(src_dir, at) / "checkpoint" / "train_metrics.json").exists()
    if at >= 0 and trained and not (iteration_dir(src_dir, at) / "results.json").exists():
        raise ValueError(f"iteration {at} of {src_dir} was not evaluated (EVAL_EVERY, or its evaluation is running): "
                         f"branch at an evaluated iteration, or evaluate it first (make iteration N={at} "
                         f"EXP={src_dir.name})")
    if at < 0 or not trained:
        raise ValueError(f"iteration {at} of {src_dir} has not finished (no results.json or checkpoint): branch "
                         "at an iteration that has")
    side = new_dir.with_name(new_dir.name + ".branching")
    shutil.rmtree(side, ignore_errors=True)
    side.mkdir(parents=True)
    for k in range(at + 1):
        if k == 0 and not iteration_dir(src_dir, 0).exists():
            continue  # `make iteration` runs no base evaluation; `make experiment` does
        if not iteration_dir(src_dir, k).is_dir():
            shutil.rmtree(side)
            raise ValueError(f"{iteration_dir(src_dir, k)} is missing: branch from an experiment whose iterations "
                             f"1..{at} all ran")
        shutil.copytree(iteration_dir(src_dir, k), iteration_dir(side, k), copy_function=shutil.copy2)
    rewrites = [(str(src_dir.resolve()) + os.sep, str(new_dir.resolve()) + os.sep),
                (str(src_dir) + os.sep, str(new_dir) + os.sep)]
    rewritten = []
    for path in sorted(side.rglob("*")):
        if path.suffix not in (".json", ".md") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        new_text = text
        for old, new in rewrites:
            new_text = new_text.replace(old, new)
        if new_text != text:
            stat = path.stat()
            path.write_text(new_text)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            rewritten.append(new_dir / path.relative_to(side))
    side.rename(new_dir)
    return rewritten


def _add_knobs(p) -> None:
    for flag, helptext in (
        ("--episodes", "episodes collected per iteration"), ("--max-steps", "cap on steps per collected episode"),
        ("--num-envs", "environments per batch in collection"), ("--reflection-rate", "share of steps reflected on"),
        ("--epochs", "training epochs"), ("--batch-size", "training batch size per device"),
        ("--lr", "learning rate (each iteration's cosine starts there)"),
        ("--lr-schedule", "iteration:rate steps, e.g. 11:3e-4 (from iteration 11 on each cosine starts at 3e-4; the "
         "iterations before keep --lr or train.yaml's); 'none' drops the recipe's lr_schedule"),
        ("--eval-episodes", "evaluation episodes"),
        ("--eval-max-steps", "cap on steps per evaluation episode"),
        ("--average", "START:COUNT, e.g. 11:3: evaluate iteration k >= 11 as the mean of the weights of the last 3 "
         "checkpoints from 11 on ('none': each as itself; default: the recipe's average_checkpoints); collection "
         "and training are unchanged"),
        ("--teacher-mix", "share of collection steps the oracle plays (DAgger's mixture)"),
        ("--teacher-mix-schedule", "iteration:share steps, e.g. 11:0 (from iteration 11 on the oracle plays no "
         "collection step; the iterations before keep --teacher-mix or collect.yaml's); 'none' drops the recipe's "
         "teacher_mix_schedule"),
        ("--hub", "publish to the Hub under this prefix (user/prefix)"),
        ("--base-model", "the base model of iteration 1 and of entry 0, instead of the recipe's base_model"),
        ("--launch", "launcher for train.py, e.g. 'accelerate launch --config_file ...'"),
        ("--seed", "the experiment's seed (0-9; default: the recipe's): collection, reflection, training, evaluation"),
        ("--sample-budget", "training samples per iteration, drawn from all iterations' reflections"),
        ("--phase-weight", "PHASE=W: a step of that phase is W times as likely to be drawn into the sample budget "
         "as another of its action class (e.g. toward=2 in Pong)"),
        ("--reflector", "who reflects (default: the recipe's): oracle, self, model:<id>, grounded[:<model>], "
         "self-imitation"),
        ("--outcome", "hindsight frame shown to the reflector: ahead, ball_at_paddle (Pong), point or next"),
        ("--rehearsal-share", "share of each training set made of perception questions (keeps the probe)"),
        ("--advantage", "self-imitation: keep the steps whose return beats their episode's mean (1) instead of "
         "those with a positive return"),
        ("--lora", "fine-tune LoRA adapters (1; TRL's r 16, alpha 32 on the attention and MLP projections, merged "
         "into each checkpoint) instead of every weight"),
        ("--vision-head", "weight of a linear head on the vision tower that also learns each corrected action while "
         "training (train.py --vision-head-weight; dropped before saving)"),
        ("--vision-head-at", "what that head reads: tower (the vision tower's patch features, the default) or "
         "connector (the image tokens the language model reads)"),
    ):
        p.add_argument(flag, default=None, help=helptext)
    p.add_argument("--probe", action="store_true", help="run the vision probe in evaluation")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Run the loop's phases and report (used by the Makefile).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("phase", help="run one phase of one iteration")
    p.add_argument("phase", choices=PHASES)
    c = sub.add_parser("check", help="check every phase's knobs (and the settings of phases that ran) first")
    b = sub.add_parser("branch", help="start a new experiment from another's first iterations (to change a knob "
                                      "from there on)")
    b.add_argument("--exp", required=True, help="the new experiment's name (data/experiments/<exp>)")
    b.add_argument("--from", dest="source", required=True, help="the experiment to branch from")
    b.add_argument("--at", type=int, required=True, help="its last iteration to keep (0 keeps the base's evaluation)")
    b.add_argument("--root", default="data/experiments", help="where experiments live")
    for name in ("summarize", "report"):
        s = sub.add_parser(name, help=f"{name} an experiment")
        s.add_argument("--exp", required=True, help="experiment name (data/experiments/<exp>)")
        s.add_argument("--recipe", default="recipes/tiny-smolvlm/pong", help="recipe folder")
        s.add_argument("--root", default="data/experiments", help="where experiments live")
    for q in (p, c):
        q.add_argument("--exp", required=True, help="experiment name (data/experiments/<exp>)")
        q.add_argument("--recipe", required=True, help="recipe folder, e.g. recipes/tiny-smolvlm/pong")
        q.add_argument("--root", default="data/experiments", help="where experiments live")
        _add_knobs(q)
    p.add_argument("--iteration", type=int, required=True, help="iteration k (0: the base model's evaluation)")
    c.add_argument("--iterations", required=True, help="check iterations 1..this (N or ITERATIONS)")
    c.add_argument("--base-eval", action="store_true", help="also the base model's evaluation (entry 0)")
    c.add_argument("--eval-every", default="1", help="EVAL_EVERY: `make experiment` evaluates every k-th iteration "
                                                      "and the last; the others train only (default 1: every one)")
    c.add_argument("--loop-jobs", default="1", help="LOOP_JOBS: phases `make experiment` runs at once (2: iteration "
                                                    "k's evaluation beside iteration k+1's collection and training)")
    c.add_argument("--force", action="store_true", help="FORCE=1: settings that differ from a phase that ran are "
                                                        "reported, not refused; what ran is kept")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.exp, args.root)
    if args.command == "branch":
        if not args.source.strip() or args.source.strip() == args.exp:
            raise ValueError("FROM (--from) names the experiment to branch from, another than EXP")
        source = experiment_dir(args.source, args.root)
        rewritten = branch(source, exp_dir, args.at)
        print(f"{exp_dir}: iterations 0..{args.at} of {source} ({len(rewritten)} records now name {exp_dir}); "
              f"go on with `make experiment EXP={args.exp} ITERATIONS=<n> <the changed knob>`")
        return
    skip = ("command", "phase", "exp", "recipe", "root", "iteration", "iterations", "base_eval", "force", "eval_every",
            "loop_jobs")
    overrides = {k: v for k, v in vars(args).items() if k not in skip}
    if args.command == "phase":
        run_phase(args.phase, exp_dir=exp_dir, recipe=Path(args.recipe), k=args.iteration, overrides=overrides)
    elif args.command == "check":
        check(exp_dir=exp_dir, recipe=Path(args.recipe), overrides=overrides, iterations=args.iterations,
              base_eval=args.base_eval, force=args.force, eval_every=args.eval_every,
              loop_jobs=args.loop_jobs)
    else:
        from vlmrl.report import format_table, summarize

        if not exp_dir.is_dir():
            raise FileNotFoundError(f"no experiment at {exp_dir}: run `make iteration EXP={args.exp}` (or "
                                    "`make experiment`) first, or pass the --root it was run under")
        summary = summarize(exp_dir, args.recipe)
        if args.command == "summarize":
            print(f"{exp_dir / 'experiment_summary.json'}: {len(summary['iterations'])} entries")
        elif not summary["iterations"]:
            raise FileNotFoundError(f"{exp_dir} holds no finished evaluation yet (no iteration_*/results.json): "
                                    "nothing to report")
        else:
            print(format_table(summary))
            print(f"\nplot: {exp_dir / 'learning_curve.png'}\nreport: {exp_dir / 'report.html'}")


if __name__ == "__main__":
    run(main)
