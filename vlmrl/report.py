"""What an experiment shows: ``experiment_summary.json``, the learning-curve plot, TensorBoard scalars and
the per-iteration table (``make report``)."""

from __future__ import annotations

import json
from pathlib import Path

from vlmrl.data import meta_path, write_json
from vlmrl.experiment import iteration_dir, recipe_settings
from vlmrl.results import game_slug, load_results


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def reference_results(game: str, root: str | Path = "data/reference") -> dict[str, dict]:
    """The random and oracle policies' evaluations, the reference lines of every curve."""
    out = {}
    for policy in ("random", "oracle"):
        path = Path(root) / game_slug(game) / policy / "results.json"
        if path.exists():
            out[policy] = load_results(path)
    return out


def build_summary(exp_dir: Path, recipe: str | Path) -> dict:
    """experiment_summary.json: entry 0 the base model's eval, entry k the phases of iteration k (every iteration
    trained; ``"eval": None`` for one not evaluated, under ``EVAL_EVERY`` or while its evaluation runs;
    ``"evaluated_as": [k-2, k-1, k]`` where it was evaluated as the mean of those checkpoints, AVERAGE)."""
    iterations = []
    base_eval = iteration_dir(exp_dir, 0) / "results.json"
    if base_eval.exists():
        iterations.append({"iteration": 0, "eval": load_results(base_eval)})
    env_steps_total = 0
    k = 1
    while any((iteration_dir(exp_dir, k) / f).exists() for f in ("results.json", "checkpoint/train_metrics.json")):
        it = iteration_dir(exp_dir, k)
        results = it / "results.json"
        trial = _read(meta_path(it / "episodes", "summary.json")) or {}
        trial = {key: v for key, v in trial.items() if key != "settings"}
        env_steps_total += int(trial.get("steps", 0))
        iterations.append(
            {
                "iteration": k,
                "trial": trial,
                "reflection": _read(meta_path(it / "reflections", "summary.json")),
                "train": _read(it / "checkpoint" / "train_metrics.json"),
                "eval": load_results(results) if results.exists() else None,
                "env_steps_total": env_steps_total,
            }
        )
        averaged = averaged_iterations(it, iterations[-1]["eval"])
        if averaged:
            iterations[-1]["evaluated_as"] = averaged
        k += 1
    summary = {"experiment": exp_dir.name, "recipe": str(recipe), "iterations": iterations}
    summary.update(run_settings(exp_dir))
    return summary


# Settings that name where a run's files are, not how it ran: two seeds differ in none of the others
# (prefetch_resets, removed, stays here so that older runs' records compare equal to newer ones).
_WHERE = ("output_dir", "progress", "push_to_hub", "prefetch_resets", "num_envs", "report_to", "logging_dir")


def run_settings(exp_dir: Path) -> dict:
    """The experiment's seed and the settings of its first collection (seed, base model, teacher mix,
    episodes, ...) and training (budget, seed): what tells two runs apart. Empty before iteration 1."""
    collect = (_read(meta_path(iteration_dir(exp_dir, 1) / "episodes", "summary.json")) or {}).get("settings")
    if not collect:
        return {}
    settings = {f"collect.{k}": v for k, v in collect.items() if k not in _WHERE}
    # Who reflected and how: two runs that differ only there are two methods, not one run twice.
    reflect = _read(meta_path(iteration_dir(exp_dir, 1) / "reflections", "reflection.json")) or {}
    settings.update({f"reflect.{k}": v for k, v in reflect.items() if k not in (*_WHERE, "episodes", "model")})
    train = _read(meta_path(iteration_dir(exp_dir, 1) / "checkpoint", "vlmrl_train.json")) or {}
    settings.update({f"train.{k}": v for k, v in train.items() if k not in ("reflections", "output_dir")})
    settings.update(scheduled_changes(exp_dir))
    # What was evaluated: runs whose checkpoints are the same but evaluated as means (AVERAGE) are two methods.
    average = evaluated_average(exp_dir)
    if average:
        settings["evaluate.average"] = average
    return {"seed": int(collect["seed"]) // 100_000, "settings": settings}


# What a schedule (LR_SCHEDULE, TEACHER_MIX_SCHEDULE) changes after iteration 1: where to read it in each iteration.
_SCHEDULED = (("collect.teacher_mix", "episodes", "summary.json", "teacher_mix"),
              ("train.learning_rate", "checkpoint", "vlmrl_train.json", "learning_rate"))


def scheduled_changes(exp_dir: Path) -> dict:
    """``{"collect.teacher_mix.schedule": "11:0.0", ...}``: the iterations whose collection's teacher mix or
    training's rate differ from the iteration before, as a schedule. Two runs that part only from iteration 11
    on are two methods, not two seeds of one."""
    iterations = sorted(int(path.name.rsplit("_", 1)[-1]) for path in exp_dir.glob("iteration_*")
                        if path.name.rsplit("_", 1)[-1].isdigit())
    changes = {}
    for name, part, record_name, key in _SCHEDULED:
        steps, before = [], None
        for k in (k for k in iterations if k >= 1):
            record = _read(meta_path(iteration_dir(exp_dir, k) / part, record_name)) or {}
            value = record.get("settings", record).get(key)
            if value is None:
                continue
            if before is not None and value != before:
                steps.append(f"{k}:{value}")
            before = value
        if steps:
            changes[f"{name}.schedule"] = ",".join(steps)
    return changes


def averaged_iterations(it: Path, results: dict | None) -> list[int] | None:
    """The iterations whose checkpoints' mean iteration folder ``it`` was evaluated as (AVERAGE); None where it
    was evaluated as its own checkpoint."""
    from vlmrl.averaging import POLICY_DIR, RECORD

    if not results or Path(str(results.get("model"))).name != POLICY_DIR:
        return None
    record = _read(it / POLICY_DIR / RECORD) or {}
    names = [Path(source).parent.name for source in record.get("sources", [])]
    return [int(name.rsplit("_", 1)[-1]) for name in names if name.rsplit("_", 1)[-1].isdigit()] or None


def evaluated_average(exp_dir: Path) -> str | None:
    """The AVERAGE (``start:count``) the experiment's averaged evaluations ran with (several, comma-joined, where
    FORCE mixed them); None where every iteration was evaluated as its own checkpoint."""
    from vlmrl.averaging import POLICY_DIR, RECORD

    records = [_read(path / POLICY_DIR / RECORD) for path in exp_dir.glob("iteration_*")
               if (path / "results.json").exists()]
    return ",".join(sorted({str(r["average"]) for r in records if r and r.get("average")})) or None


def summarize(exp_dir: Path, recipe: str | Path) -> dict:
    """Writes experiment_summary.json, the learning-curve PNG, TensorBoard scalars and report.html."""
    summary = build_summary(exp_dir, recipe)
    write_json(exp_dir / "experiment_summary.json", summary)
    game = recipe_settings(recipe)["game"]
    if evaluated_entries(summary):  # a run's first iteration may be trained and its evaluation still running
        references = reference_results(game)
        plot_learning_curve(summary, references, exp_dir / "learning_curve.png")
        write_tensorboard(summary, exp_dir / "tensorboard" / "loop")
        from vlmrl.report_page import write_report_page

        write_report_page(exp_dir, summary, references)
    return summary


def plot_learning_curve(summary: dict, references: dict[str, dict], path: Path) -> Path:
    """Eval return (95% CI) and oracle agreement against agent steps collected, each point labelled with its
    iteration, the random and oracle policies as reference lines; whole-number ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    its = evaluated_entries(summary)
    steps = [e.get("env_steps_total", 0) for e in its]
    mean = [e["eval"]["mean_return"] for e in its]
    low = [e["eval"]["mean_return"] - e["eval"]["ci95"][0] for e in its]
    high = [e["eval"]["ci95"][1] - e["eval"]["mean_return"] for e in its]
    agreement = [e["eval"].get("oracle_agreement") for e in its]
    toward = [_toward(e["eval"]) for e in its]
    fig, (ax_return, ax_agree) = plt.subplots(1, 2, figsize=(11, 4))
    name = summary["experiment"]
    ax_return.errorbar(steps, mean, yerr=[low, high], marker="o", capsize=3, label=f"vlmrl ({name})")
    ax_return.set_ylabel("mean eval return (95% CI)")
    if any(a is not None for a in agreement):
        ax_agree.plot(*_present(steps, agreement), marker="o", label="all steps")
    if any(t is not None for t in toward):
        ax_agree.plot(*_present(steps, toward), marker="s", linestyle="--", label="ball coming toward you")
    ax_agree.set_ylabel("oracle agreement")
    ax_agree.set_ylim(-0.02, 1.02)
    for policy, style in (("random", ":"), ("oracle", "--")):
        ref = references.get(policy)
        if ref is None:
            continue
        ax_return.axhline(ref["mean_return"], linestyle=style, color="grey",
                          label=f"{policy} policy ({ref['mean_return']:+.1f})")
        if ref.get("oracle_agreement") is not None:
            ax_agree.axhline(ref["oracle_agreement"], linestyle=style, color="grey",
                             label=f"{policy} policy ({ref['oracle_agreement']:.2f})")
    for ax, values in ((ax_return, mean), (ax_agree, agreement)):
        for e, x, y in zip(its, steps, values, strict=True):
            if y is not None:
                ax.annotate(f"it {e['iteration']}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set_xlabel("agent steps collected")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_return.set_title("eval return")
    ax_agree.set_title("agreement with the oracle")
    fig.suptitle(f"{name}: learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluated_entries(summary: dict) -> list[dict]:
    """The summary's entries that hold an evaluation (``EVAL_EVERY`` skips some)."""
    return [e for e in summary["iterations"] if e.get("eval") is not None]


def _present(xs: list, ys: list) -> tuple[list, list]:
    """The points whose value exists (records written before a metric existed lack it)."""
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def write_tensorboard(summary: dict, log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for entry in summary["iterations"]:
            k = entry["iteration"]
            ev = entry["eval"] or {}
            if ev:
                writer.add_scalar("eval/mean_return", ev["mean_return"], k)
            if ev.get("oracle_agreement") is not None:
                writer.add_scalar("eval/oracle_agreement", ev["oracle_agreement"], k)
            if _toward(ev) is not None:
                writer.add_scalar("eval/oracle_agreement_ball_toward", _toward(ev), k)
            if entry.get("trial") and entry["trial"].get("mean_return") is not None:
                writer.add_scalar("trial/mean_return", entry["trial"]["mean_return"], k)
            reflection = entry.get("reflection") or {}
            for key in ("reflected", "poor_steps", "invalid", "accuracy"):
                if reflection.get(key) is not None:
                    writer.add_scalar(f"reflection/{key}", reflection[key], k)
            train = entry.get("train") or {}
            if train.get("train_loss") is not None:
                writer.add_scalar("train/loss", train["train_loss"], k)


TABLE_HEADER = ("iteration", "agent steps", "trial return", "reflected", "reflection acc.", "train loss",
                "eval return (95% CI)", "oracle agreement", "agreement, ball toward you", "invalid")


def table_rows(summary: dict) -> list[list[str]]:
    """The per-iteration table's cells (``TABLE_HEADER``'s columns): what ``make report`` prints and
    report.html shows."""
    rows = []
    for e in summary["iterations"]:
        ev, trial = e["eval"], e.get("trial") or {}
        refl, train = e.get("reflection") or {}, e.get("train") or {}
        row = [str(e["iteration"]), f"{e.get('env_steps_total', 0):,}", _fmt(trial.get("mean_return"), "+.2f"),
               str(refl.get("reflected", "-")), _fmt(refl.get("accuracy"), ".3f"), _fmt(train.get("train_loss"), ".3f")]
        if ev is None:
            row += ["not evaluated", "-", "-", "-"]
        else:
            averaged = e.get("evaluated_as")
            note = f", mean of {averaged[0]}-{averaged[-1]}" if averaged else ""
            row += [f"{ev['mean_return']:+.2f} ({ev['ci95'][0]:+.2f}..{ev['ci95'][1]:+.2f}{note})",
                    _fmt(ev.get("oracle_agreement"), ".3f"), _fmt(_toward(ev), ".3f"), f"{ev['invalid_rate']:.1%}"]
        rows.append(row)
    return rows


def format_table(summary: dict) -> str:
    """The per-iteration table ``make report`` prints (markdown)."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines)


def _toward(ev: dict) -> float | None:
    """Agreement while the ball comes toward the player (results written before it existed: None)."""
    return ((ev.get("oracle_agreement_by_phase") or {}).get("toward") or {}).get("agreement")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


