"""The fine-tuning phase: TRL's SFTTrainer on reflections (prompt/completion + image).

TRL collates VLM batches itself and masks the prompt (completion-only loss is its default
for prompt/completion data); accelerate handles devices and processes. What is ours: reading
one or more reflections datasets, CPU-safe defaults, resuming, and the checkpoint's card.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import concatenate_datasets

from vlmrl.configs import ObservationArguments
from vlmrl.data import check_manifest, ensure_writable, meta_path, record_manifest, require_columns, write_json
from vlmrl.games import Game, get_game
from vlmrl.observation import write_observation_record
from vlmrl.references import load_dataset_reference

MANIFEST = "vlmrl_train.json"
METRICS = "train_metrics.json"
# Attention and MLP projections of Idefics3's Llama text model (vision tower left frozen by LoRA).
IDEFICS3_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainScriptArguments(ObservationArguments):
    """train.py's own arguments; the rest are TRL's SFTConfig and ModelConfig."""

    reflections: list[str] = field(
        default_factory=list,
        metadata={"help": "reflections datasets (folders or Hub ids); earlier iterations' too, against forgetting"},
    )
    iteration: int = field(default=1, metadata={"help": "loop iteration, recorded in the model card"})
    game: str = field(default="ALE/Pong-v5", metadata={"help": "the game, recorded in the model card"})
    recipe: str | None = field(default=None, metadata={"help": "recipe folder, recorded in the model card"})
    balance_actions: bool = field(
        default=False,
        metadata={"help": "resample the reflections so each corrected-action class (up/down/stay) is equally frequent"},
    )
    sample_budget: int | None = field(
        default=None,
        metadata={"help": "train on this many samples drawn from all the reflections given (the newest weighted "
                          "by --newest-share), so every iteration costs the same; default: every reflection, once "
                          "an epoch"},
    )
    rehearsal_share: float = field(
        default=0.0,
        metadata={"help": "share of the training set made of perception-question samples on the reflections' frames "
                          "(answer keys from their perception_answers column), so the tuned model still answers "
                          "the vision probe and can reflect grounded; 0: none"},
    )
    vision_head_weight: float = field(
        default=0.0,
        metadata={"help": "also train a linear head on the vision tower's pooled features to answer each sample's "
                          "corrected action (the action named in its answer), its loss times this weight added to the "
                          "language model's; the head is dropped before saving; 0: off"},
    )
    vision_head_at: str = field(
        default="tower",
        metadata={"help": "with --vision-head-weight: what the head reads, 'tower' (the vision tower's patch "
                          "features) or 'connector' (the image tokens the language model reads)"},
    )
    newest_share: float = field(
        default=0.5,
        metadata={"help": "with --sample-budget: the share of the samples drawn from the last reflections dataset "
                          "(the newest iteration's); the rest come evenly from the others"},
    )
    phase_weight: str | None = field(
        default=None,
        metadata={"help": "with --sample-budget: PHASE=W[,PHASE=W] makes a step of that phase W times as likely to "
                          "be drawn as another of its action class (e.g. toward=2: Pong's ball coming toward you, "
                          "read from the reflections' perception_answers); default: every step alike"},
    )
    push_to_hub_repo: str | None = field(
        default=None, metadata={"help": "Hub model repo to publish the checkpoint to (branch iteration-N)"}
    )

    def __post_init__(self) -> None:
        # "a,b" on the command line and a YAML list both work.
        flat = []
        for item in self.reflections:
            flat += [p for p in str(item).split(",") if p]
        self.reflections = flat
        if self.sample_budget is not None and self.sample_budget < 1:
            raise ValueError(f"--sample-budget must be >= 1, got {self.sample_budget}")
        if not 0.0 <= self.newest_share <= 1.0:
            raise ValueError(f"--newest-share must be in [0, 1], got {self.newest_share}")
        if not self.vision_head_weight >= 0.0:
            raise ValueError(f"--vision-head-weight must be >= 0, got {self.vision_head_weight}")
        from vlmrl.vision_head import check_head_place

        check_head_place(self.vision_head_at)
        if not 0.0 <= self.rehearsal_share < 1.0:
            raise ValueError(f"--rehearsal-share must be in [0, 1), got {self.rehearsal_share}")
        if self.phase_weight is not None:
            if self.sample_budget is None:
                raise ValueError("--phase-weight weighs the draw of --sample-budget: give both")
            parse_phase_weights(self.phase_weight, get_game(self.game))
        self.observation_config()


def parse_phase_weights(raw: str, game: Game) -> dict[str, float]:
    """``"toward=2"`` or ``"toward=2,none=0.5"`` -> {phase: weight}, checked against the game's phases."""
    from vlmrl.cli import number_pairs

    if game.phase_question is None:
        raise ValueError(f"--phase-weight: {game.name} records no phase in its perception answers")
    weights = number_pairs(raw, "--phase-weight", "phase=weight", f"{game.phases[0]}=2")
    for phase, weight in weights.items():
        if phase not in game.phases:
            known = ", ".join(game.phases)
            raise ValueError(f"--phase-weight: {game.name} has no phase {phase!r}; its phases: {known}")
        if weight <= 0:
            raise ValueError(f"--phase-weight: the weight of {phase!r} must be a number > 0, got {weight:g}")
    return weights


def phase_weights_of_rows(answers: list[str | None], game: Game, weights: dict[str, float]):
    """Each row's draw weight from its ``perception_answers`` JSON (a phase not named weighs 1)."""
    import json

    import numpy as np

    return np.array([weights.get(game.phase_of_answers(json.loads(a or "{}")), 1.0) for a in answers])


def _card_metrics(metrics: dict, training_args) -> dict:
    hyper = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
             "lr_scheduler_type", "seed")
    return {**{k: v for k, v in metrics.items() if k != "resumed_from"},
            **{k: getattr(training_args, k) for k in hyper}}


def balance_by_action_class(dataset, game: Game, seed: int = 0):
    """Oversamples the rarer corrected-action classes to the size of the largest.

    A good teacher says "stay" most of the time; trained on that imbalance, the tiny model
    answered NOOP in every state (measured: eval agreement stuck at the share of 'stay' states).
    """
    import numpy as np

    if "correct_action" not in dataset.column_names:
        raise ValueError("--balance_actions needs the reflections' correct_action column")
    classes = [game.action_class(a) for a in dataset["correct_action"]]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        groups.setdefault(c, []).append(i)
    size = max(len(g) for g in groups.values())
    rng = np.random.default_rng(seed)
    picks = []
    for rows in groups.values():
        picks += rows + rng.choice(rows, size=size - len(rows), replace=True).tolist()
    rng.shuffle(picks)
    return dataset.select(picks)


def draw_budget(sizes: list[int], classes: list[str] | None, budget: int, newest_share: float, seed: int = 0,
                weights=None):
    """Row indices (into the datasets concatenated in order) of a fixed budget of training samples.

    The last dataset (the newest iteration's) gives ``newest_share`` of the draws, the others the rest
    in proportion to their size (where there are none, the newest gives all); with ``classes`` each
    corrected-action class gets the same share within each part (the balance of ``balance_actions``).
    Rows are drawn without replacement while a part has rows enough, then with; with ``weights`` (one per
    row, > 0) a row is drawn in proportion to its weight within its class and part.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = [np.arange(starts[-2], starts[-1])]
    if len(sizes) > 1:
        parts.insert(0, np.arange(0, starts[-2]))
    shares = [1.0] if len(parts) == 1 else [1.0 - newest_share, newest_share]
    counts = np.floor(np.array(shares) * budget).astype(int)
    counts[-1] += budget - counts.sum()
    picks = []
    for rows, n in zip(parts, counts, strict=True):
        if n == 0 or len(rows) == 0:
            continue
        groups = [rows]
        if classes is not None:
            by_class: dict[str, list[int]] = {}
            for r in rows:
                by_class.setdefault(classes[r], []).append(int(r))
            groups = [np.array(g) for g in by_class.values()]
        per_group = np.full(len(groups), n // len(groups))
        per_group[: n - per_group.sum()] += 1
        for group, k in zip(groups, per_group, strict=True):
            p = None if weights is None else weights[group] / weights[group].sum()
            picks += rng.choice(group, size=int(k), replace=bool(k > len(group)), p=p).tolist()
    picks = np.array(picks, dtype=np.int64)
    rng.shuffle(picks)
    return picks


def load_reflections(references: list[str], keep_correct_action: bool = False, keep_answers: bool = False):
    """Concatenates the reflections datasets, checking each is usable training data; returns the dataset
    and each reference's row count (in order: the budget's draw weighs the newest part). ``keep_answers``
    keeps (and requires) the ``perception_answers`` column."""
    if not references:
        raise ValueError("--reflections is required: one or more reflections datasets (folders or Hub ids)")
    parts = []
    for ref in references:
        ds = load_dataset_reference(ref)
        require_columns(ds, ["prompt", "completion"], f"reflections ({ref})")
        if "image" not in ds.column_names and "images" not in ds.column_names:
            raise ValueError(f"the reflections dataset {ref!r} has no image or images column")
        if len(ds) == 0:
            raise ValueError(f"the reflections dataset {ref!r} is empty: nothing to train on")
        if keep_answers and "perception_answers" not in ds.column_names:
            raise ValueError(f"--phase-weight reads each step's phase from perception_answers, which the reflections "
                             f"dataset {ref!r} lacks (written by reflect.py since the rehearsal): drop --phase-weight")
        wanted = ("prompt", "completion", "image", "images", *(("correct_action",) if keep_correct_action else ()),
                  *(("perception_answers",) if keep_answers else ()))
        keep = [c for c in wanted if c in ds.column_names]
        parts.append(ds.select_columns(keep))
    return (concatenate_datasets(parts) if len(parts) > 1 else parts[0]), [len(p) for p in parts]


def cpu_defaults() -> dict:
    """Without a GPU, train on the CPU in fp32 without the user saying so (a recipe's bf16 is then ignored)."""
    # TRL turns gradient checkpointing on by default: on a CPU it only re-computes the forward (~1.5x slower).
    return {} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}


def apply_device_defaults(training_args) -> None:
    """bf16 on a GPU that has it, fp32 on CPU; settings that break Idefics3 on CPU turned off."""
    if torch.cuda.is_available():
        if not training_args.fp16 and torch.cuda.is_bf16_supported():
            training_args.bf16 = True
    else:
        training_args.bf16 = False
        training_args.fp16 = False
    # Truncating image tokens breaks Idefics3 (FACTS): never cut a sequence.
    training_args.max_length = None


def _check_output_dir(output_dir: Path, settings: dict) -> None:
    manifest = meta_path(output_dir, MANIFEST)
    if not manifest.exists() and (output_dir / "config.json").exists():
        raise ValueError(
            f"{output_dir} already holds a model that vlmrl's train.py did not write; use another --output-dir"
        )
    check_manifest(output_dir, MANIFEST, settings, "training run", record=False)


def validate_training_args(script_args: TrainScriptArguments, training_args, model_args) -> None:
    """Refuses settings that would train nothing or not at all, before anything is loaded or written
    (an epoch count of -1 used to give an untrained "checkpoint" that counted as done)."""
    from vlmrl.models import check_model_reference

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the model to fine-tune (path or Hub id)")
    check_model_reference(model_args.model_name_or_path)
    if training_args.max_steps is not None and training_args.max_steps > 0:
        pass  # --max_steps wins over the epochs
    elif not training_args.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs must be > 0 (or --max_steps > 0), got {training_args.num_train_epochs}")
    if training_args.per_device_train_batch_size < 1 or training_args.gradient_accumulation_steps < 1:
        raise ValueError("--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1, got "
                         f"{training_args.per_device_train_batch_size} and {training_args.gradient_accumulation_steps}")
    if not training_args.learning_rate >= 0:
        raise ValueError(f"--learning_rate must be >= 0, got {training_args.learning_rate}")
    if not script_args.reflections:
        raise ValueError("--reflections is required: one or more reflections datasets (folders or Hub ids)")
    if script_args.vision_head_weight and model_args.use_peft:
        raise ValueError("--vision-head-weight trains the vision tower, which LoRA leaves frozen: use one or the other")


def train_settings(script_args: TrainScriptArguments, training_args, model_args) -> dict:
    """What a training run records and a resumed run must share: its inputs and the knobs that shape it."""
    settings = {"base_model": model_args.model_name_or_path, "reflections": script_args.reflections,
                "iteration": script_args.iteration}
    if script_args.sample_budget is not None:  # (absent from the records of runs without a budget)
        settings.update(sample_budget=script_args.sample_budget, newest_share=script_args.newest_share)
        if script_args.phase_weight is not None:  # (absent from the records of runs without it)
            weights = parse_phase_weights(script_args.phase_weight, get_game(script_args.game))
            settings["phase_weight"] = ",".join(f"{phase}={w:g}" for phase, w in weights.items())
    settings.update({k: getattr(training_args, k) for k in _RECORDED_HYPER})
    settings["balance_actions"] = script_args.balance_actions
    settings["game"] = script_args.game  # its action classes balance the draw (absent from older records)
    if script_args.vision_head_weight:  # (absent from the records of runs without the head)
        settings["vision_head_weight"] = script_args.vision_head_weight
        if script_args.vision_head_at != "tower":  # (absent from the records of runs on the tower)
            settings["vision_head_at"] = script_args.vision_head_at
    return settings


# Knobs of the Trainer a resumed run must share (records written before they were kept lack them: not compared).
_RECORDED_HYPER = ("num_train_epochs", "learning_rate", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "lr_scheduler_type", "seed")


def _json_value(value):
    return value if isinstance(value, int | float | str | bool | type(None) | list) else str(value)


def complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-*`` the Trainer can resume from. A newer one that is incomplete (a full disk
    or a kill while it was saved: no trainer state, or weights that do not open) is moved aside to
    ``<name>.incomplete`` with a message, so it never blocks a rerun; the one before it is used."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not output_dir.is_dir():
        return None
    found = sorted((p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                    if p.is_dir() and p.name.split("-")[-1].isdigit()), key=lambda p: int(p.name.split("-")[-1]))
    for checkpoint in reversed(found):
        problem = _checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        aside = checkpoint.with_name(checkpoint.name + ".incomplete")
        checkpoint.rename(aside)
        print(f"warning: {checkpoint} is incomplete ({problem}); moved to {aside} (delete it when you like) and "
              "resuming from the one before it, if any", flush=True)
    return None


def _checkpoint_problem(checkpoint: Path) -> str | None:
    import json

    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    weights = [p for p in checkpoint.glob("*.safetensors")] or list(checkpoint.glob("*.bin"))
    if not weights:
        return "no weights"
    for path in weights:
        if path.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            except Exception as err:  # noqa: BLE001 - any failure to open means unusable
                return f"{path.name} does not open: {type(err).__name__}"
    return None


def train(script_args: TrainScriptArguments, training_args, model_args) -> dict:
    """Fine-tunes ``model_args.model_name_or_path`` on the reflections; returns the training metrics."""
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer, get_peft_config

    from vlmrl.models import load_processor, load_vlm, vision_image_size

    validate_training_args(script_args, training_args, model_args)
    base = model_args.model_name_or_path
    output_dir = Path(training_args.output_dir)
    if training_args.process_index == 0:
        ensure_writable(output_dir)
    dataset, sizes = load_reflections(script_args.reflections, keep_correct_action=script_args.balance_actions,
                                      keep_answers=script_args.phase_weight is not None)
    pool = len(dataset)
    if script_args.sample_budget is not None:
        game = get_game(script_args.game)
        classes = [game.action_class(a) for a in dataset["correct_action"]] if script_args.balance_actions else None
        weights = None
        if script_args.phase_weight is not None:
            weights = phase_weights_of_rows(dataset["perception_answers"], game,
                                            parse_phase_weights(script_args.phase_weight, game))
            dataset = dataset.remove_columns(["perception_answers"])
        dataset = dataset.select(draw_budget(sizes, classes, script_args.sample_budget, script_args.newest_share,
                                             seed=training_args.seed, weights=weights))
    elif script_args.balance_actions:
        dataset = balance_by_action_class(dataset, get_game(script_args.game), seed=training_args.seed)
    if script_args.balance_actions:
        dataset = dataset.remove_columns(["correct_action"])
    settings = {k: _json_value(v) for k, v in train_settings(script_args, training_args, model_args).items()}
    if training_args.process_index == 0:
        _check_output_dir(output_dir, settings)
    apply_device_defaults(training_args)

    observation = script_args.observation_config(base, vision_image_size(base))
    rehearsed = 0
    if script_args.rehearsal_share > 0:
        from vlmrl.rehearsal import mix_rehearsal

        dataset, rehearsed = mix_rehearsal(dataset, script_args.reflections, get_game(script_args.game), observation,
                                           script_args.rehearsal_share, seed=training_args.seed)
    processor = load_processor(base, observation)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    model = load_vlm(base, device=torch.device("cpu"), dtype=dtype)
    peft_config = get_peft_config(model_args)
    if peft_config is not None and not model_args.lora_target_modules:
        peft_config.target_modules = IDEFICS3_LORA_TARGETS

    if training_args.process_index == 0:
        complete_checkpoint(output_dir)  # an incomplete newest checkpoint is moved aside, never resumed from
        record_manifest(output_dir, MANIFEST, settings)  # the run has really started: its settings are recorded
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    head = None
    trainer_class = SFTTrainer
    if script_args.vision_head_weight:
        from vlmrl.vision_head import VisionActionHead, with_vision_head

        head = VisionActionHead(model, processor.tokenizer, get_game(script_args.game), script_args.vision_head_weight,
                                script_args.vision_head_at, seed=training_args.seed)
        trainer_class = with_vision_head(SFTTrainer)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        **({"vision_head": head} if head is not None else {}),
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    if trainer.state.global_step == 0:
        raise ValueError("training took no optimizer step (too few samples for one batch?); no checkpoint written")
    if peft_config is not None:
        trainer.model = trainer.model.merge_and_unload()  # a plain checkpoint every phase can load
    if head is not None:
        head.check_used()
        head.detach(trainer.model)  # the checkpoint is the plain model
    trainer.model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    metrics = {
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "samples": len(dataset),
        "rehearsal_samples": rehearsed,
        "reflections_pool": pool,
        "epochs": training_args.num_train_epochs,
        "global_steps": trainer.state.global_step,
        "wall_s": wall,
        "samples_per_s": result.metrics.get("train_samples_per_second"),
        "resumed_from": last,
        "lora": peft_config is not None,
        "vision_head_weight": script_args.vision_head_weight,
        "vision_head_at": script_args.vision_head_at if script_args.vision_head_weight else None,
    }
    if trainer.is_world_process_zero():
        write_json(output_dir / METRICS, metrics)
        # What the checkpoint sees, for tools that only get its path (the vision probe).
        write_observation_record(output_dir, observation)
        from vlmrl.cards import write_model_card

        write_model_card(
            output_dir, base_model=base, iteration=script_args.iteration, datasets=script_args.reflections,
            game=script_args.game, recipe=script_args.recipe, train_metrics=_card_metrics(metrics, training_args),
            observation=observation, model_path=str(output_dir),
        )
    return metrics
