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
    push_to_hub_repo: str | None = field(
        default=None, metadata={"help": "Hub model repo to publish the checkpoint to (branch iteration-N)"}
    )

    def __post_init__(self) -> None:
        # "a,b" on the command line and a YAML list both work.
        flat = []
        for item in self.reflections:
            flat += [p for p in str(item).split(",") if p]
        self.reflections = flat
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
    if script_args.balance_actions:
        dataset = balance_by_action_class(dataset, get_game(script_args.game), seed=training_args.seed)
        dataset = dataset.remove_columns(["correct_action"])
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {"base_model": base, "reflections": script_args.reflections, "iteration": script_args.iteration}
    if training_args.process_index == 0:
        _check_output_dir(output_dir, settings)
    apply_device_defaults(training_args)

    observation = script_args.observation_config(base, vision_image_size(base))
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
