"""The fine-tuning phase: TRL's SFTTrainer on the reflections, under accelerate.

    python train.py --config recipes/tiny-smolvlm/pong/train.yaml \
        --model_name_or_path data/models/tiny-smolvlm --reflections data/.../reflections --output_dir ckpt
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml train.py --config ...
"""

from trl import ModelConfig, SFTConfig

from vlmrl.cli import parse, run
from vlmrl.training import TrainScriptArguments, cpu_defaults, train


def main(script_args: TrainScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    metrics = train(script_args, training_args, model_args)
    if training_args.process_index == 0:
        print(
            f"train loss {metrics['train_loss']:.4f} (first logged {metrics['first_logged_loss']}, last"
            f" {metrics['last_logged_loss']}) | samples {metrics['samples']}"
            f" | {metrics['samples_per_s'] or 0:.1f} samples/s | checkpoint in {training_args.output_dir}"
        )
        if script_args.push_to_hub_repo:
            from vlmrl.hub import push_checkpoint

            push_checkpoint(training_args.output_dir, script_args.push_to_hub_repo,
                            revision=f"iteration-{script_args.iteration}")
    return metrics


def cli(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default: sys.argv) parsed and run; a user's mistake is one line and exit 2."""
    run(lambda: main(*parse((TrainScriptArguments, SFTConfig, ModelConfig), argv, defaults=cpu_defaults(),
                                prog="train.py")))


if __name__ == "__main__":
    cli()
