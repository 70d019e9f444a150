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
from vlmrl.data import check_manifest, meta_path, require_columns, write_json
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
    newest_share: float = field(
        default=0.5,
        metadata={"help": "with --sample-budget: the share of the samples drawn from the last reflections dataset "
                          "(the newest iteration's); the rest come evenly from the others"},
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
        if not 0.0 <= self.rehearsal_share < 1.0:
            raise ValueError(f"--rehearsal-share must be in [0, 1), got {self.rehearsal_share}")
        self.observation_config()


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


def draw_budget(sizes: list[int], classes: list[str] | None, budget: int, newest_share: float, seed: int = 0):
    """Row indices (into the datasets concatenated in order) of a fixed budget of training samples.

    The last dataset (the newest iteration's) gives ``newest_share`` of the draws, the others the rest
    in proportion to their size (where there are none, the newest gives all); with ``classes`` each
    corrected-action class gets the same share within each part (the balance of ``balance_actions``).
    Rows are drawn without replacement while a part has rows enough, then with.
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
            picks += rng.choice(group, size=int(k), replace=bool(k > len(group))).tolist()
    picks = np.array(picks, dtype=np.int64)
    rng.shuffle(picks)
    return picks


def load_reflections(references: list[str], keep_correct_action: bool = False):
    """Concatenates the reflections datasets, checking each is usable training data."""
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
        wanted = ("prompt", "completion", "image", "images", *(("correct_action",) if keep_correct_action else ()))
        keep = [c for c in wanted if c in ds.column_names]
        parts.append(ds.select_columns(keep))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


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
    check_manifest(output_dir, MANIFEST, settings, "training run")


def train(script_args: TrainScriptArguments, training_args, model_args) -> dict:
    """Fine-tunes ``model_args.model_name_or_path`` on the reflections; returns the training metrics."""
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer, get_peft_config

    from vlmrl.models import load_processor, load_vlm, vision_image_size

    base = model_args.model_name_or_path
    if not base:
        raise ValueError("--model_name_or_path is required: the model to fine-tune (path or Hub id)")
    dataset = load_reflections(script_args.reflections, keep_correct_action=script_args.balance_actions)
    pool = len(dataset)
    if script_args.sample_budget is not None:
        game = get_game(script_args.game)
        classes = [game.action_class(a) for a in dataset["correct_action"]] if script_args.balance_actions else None
        sizes = [len(load_dataset_reference(ref)) for ref in script_args.reflections]
        dataset = dataset.select(draw_budget(sizes, classes, script_args.sample_budget, script_args.newest_share,
                                             seed=training_args.seed))
    elif script_args.balance_actions:
        dataset = balance_by_action_class(dataset, get_game(script_args.game), seed=training_args.seed)
    if script_args.balance_actions:
        dataset = dataset.remove_columns(["correct_action"])
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {"base_model": base, "reflections": script_args.reflections, "iteration": script_args.iteration}
    if script_args.sample_budget is not None:  # (absent from the records of runs without a budget)
        settings.update(sample_budget=script_args.sample_budget, newest_share=script_args.newest_share)
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

    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    if peft_config is not None:
        trainer.model = trainer.model.merge_and_unload()  # a plain checkpoint every phase can load
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
    }
    if trainer.is_world_process_zero():
        write_json(output_dir / METRICS, metrics)
        # What the checkpoint sees, for tools that only get its path (the vision probe).
        write_observation_record(output_dir, observation)
        from vlmrl.cards import write_model_card

        write_model_card(
            output_dir, base_model=base, iteration=script_args.iteration, datasets=script_args.reflections,
            game=script_args.game, recipe=script_args.recipe, train_metrics=_card_metrics(metrics, training_args),
        )
    return metrics
