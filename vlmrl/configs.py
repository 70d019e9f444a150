"""Script arguments as dataclasses: every field is a CLI flag (both -/_ spellings) and a recipe key."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmrl.observation import ObservationConfig, resolve_observation


@dataclass
class EnvArguments:
    """The game and its protocol (ALE v5 by default)."""

    game: str = field(default="ALE/Pong-v5", metadata={"help": "ALE game id, e.g. ALE/Pong-v5"})
    frameskip: int = field(default=4, metadata={"help": "emulator frames per agent step (v5: 4)"})
    repeat_action_probability: float = field(
        default=0.25, metadata={"help": "sticky-action probability (v5: 0.25)"}
    )


@dataclass
class ObservationArguments:
    """What the model sees of the game. Unset fields come from the model's record (the tiny model's
    build and every checkpoint train.py writes say what they see), else one RGB frame at the model's size."""

    frames: int | None = field(
        default=None, metadata={"help": "frames per observation (2 shows which way the ball moves); default: "
                                        "the model's record, else 1"})
    encoding: str | None = field(
        default=None,
        metadata={"help": "rgb: each frame its own image; motion: 2 frames packed in one image (tiny model); "
                          "default: the model's record, else rgb"},
    )
    crop: bool | None = field(default=None, metadata={"help": "crop the playfield before resizing (default: the "
                                                               "model's record, else false)"})
    image_size: int | None = field(
        default=None, metadata={"help": "image side in pixels (default: the model's record, else its vision size)"}
    )
    resample: str | None = field(default=None, metadata={"help": "resize filter: nearest (default) keeps the ball, "
                                                                   "or bilinear"})

    def observation_config(self, model: str | None = None, default_image_size: int = 384) -> ObservationConfig:
        """The observation: these fields where set, else ``model``'s record, else the defaults."""
        given = {k: getattr(self, k) for k in ("frames", "encoding", "crop", "image_size", "resample")}
        return resolve_observation(given, model, default_image_size)


@dataclass
class PolicyArguments(ObservationArguments):
    """Who plays: a VLM or a baseline policy, and how the VLM decodes."""

    model: str | None = field(
        default=None, metadata={"help": "model path or Hub id (a VLM); required with --policy model"}
    )
    policy: str = field(default="model", metadata={"help": "model, random or oracle"})
    decode: str = field(
        default="constrained",
        metadata={"help": "constrained: score the legal actions in one forward; generate: free JSON text, parsed"},
    )
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    max_new_tokens: int = field(default=48, metadata={"help": "generation budget per answer (generate mode)"})
    min_new_tokens: int = field(
        default=0, metadata={"help": "generate mode: at least this many tokens per answer (for timing a fixed length)"}
    )
    action_bias: str | None = field(
        default=None,
        metadata={"help": "constrained mode: added to the log-probability of each action of a class before the "
                          "pick, e.g. stay=1.79 (the decision threshold: > 0 picks that class more; default none)"},
    )

    def action_biases(self) -> dict[str, float]:
        """``--action-bias`` as {class: bias}; empty when not given."""
        from vlmrl.cli import number_pairs

        pairs = number_pairs(self.action_bias, "--action-bias", "class=number", "stay=1.5")
        return {name.lower(): bias for name, bias in pairs.items()}

    def validate_policy(self) -> None:
        from vlmrl.policies import policy_names

        if self.policy not in policy_names():
            raise ValueError(f"--policy must be one of {', '.join(policy_names())}, got {self.policy!r}")
        if self.policy == "model" and not self.model:
            raise ValueError("--policy model needs --model (a path or Hub id); or use --policy random/oracle")
        if self.decode not in ("constrained", "generate"):
            raise ValueError(f"--decode must be constrained or generate, got {self.decode!r}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.action_biases() and self.decode != "constrained":
            raise ValueError("--action-bias applies to constrained decoding only (--decode constrained)")
        if self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"--max-new-tokens must be >= 1 and --min-new-tokens in [0, max], got "
                             f"{self.max_new_tokens} and {self.min_new_tokens}")
        if self.policy == "model":
            from vlmrl.models import check_model_reference

            check_model_reference(self.model)  # a missing model is found before anything is written
        self.observation_config(self.model if self.policy == "model" else None)  # validates now, before any work


@dataclass
class LoggingArguments:
    """Live scalars of a phase (episodic return against agent steps), as training reports them."""

    report_to: str = field(
        default="tensorboard", metadata={"help": "tensorboard, trackio, wandb (where installed) or none"}
    )
    logging_dir: str | None = field(
        default=None,
        metadata={"help": "TensorBoard folder (default: $TENSORBOARD_LOGGING_DIR, else inside the output dir)"},
    )


@dataclass
class CollectArguments(LoggingArguments, PolicyArguments, EnvArguments):
    """collect.py: play episodes and record every step as an episodes dataset."""

    episodes: int = field(default=10, metadata={"help": "episodes to collect"})
    max_steps: int | None = field(default=None, metadata={"help": "cap on agent steps per episode (default: none)"})
    num_envs: int = field(default=8, metadata={"help": "environments stepped as one batch"})
    seed: int = field(default=0, metadata={"help": "episode i is played with seed + i"})
    gamma: float = field(
        default=0.99,
        metadata={"help": "discount of the stored return_to_go (the one gamma: reflection reads that column)"},
    )
    teacher_mix: float = field(
        default=0.0,
        metadata={"help": "probability that a step plays the oracle's action instead of the model's (DAgger's mix)"},
    )
    iteration: int = field(default=0, metadata={"help": "loop iteration recorded with each step"})
    output_dir: str = field(default="data/episodes", metadata={"help": "where the episodes dataset is written"})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset id to publish to (user/name); the local copy is kept"}
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.episodes < 0:
            raise ValueError(f"--episodes must be >= 0, got {self.episodes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.num_envs < 1:
            raise ValueError(f"--num-envs must be >= 1, got {self.num_envs}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"--gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.teacher_mix <= 1.0:
            raise ValueError(f"--teacher-mix must be in [0, 1], got {self.teacher_mix}")
        if self.seed < 0 or self.seed + self.episodes > 1_000_000:
            raise ValueError("collection seeds must lie in [0, 1,000,000): evaluation uses the seeds above")
        self.validate_policy()


@dataclass
class ReflectArguments(ObservationArguments):
    """reflect.py: pick poor steps of an episodes dataset and write corrections for them."""

    episodes: str | None = field(default=None, metadata={"help": "episodes dataset: a local folder or a Hub id"})
    game: str = field(default="ALE/Pong-v5", metadata={"help": "the game the episodes were played in"})
    reflector: str = field(
        default="self",
        metadata={"help": "self, oracle, model:<path or Hub id>, grounded (the acting model answers the game's "
                          "questions, the game's rules correct), grounded:<path> (e.g. the frozen base) or "
                          "self-imitation (keep the action taken on steps that went well)"},
    )
    outcome: str | None = field(
        default=None,
        metadata={"help": "hindsight: the later frame shown as the move's outcome: ahead (a few steps later, "
                          "--outcome-max-steps), ball_at_paddle (Pong), point or next; default: the game's for "
                          "grounded (Pong: ahead, 2 steps), next (no hindsight) for self and model:"},
    )
    outcome_max_steps: int | None = field(
        default=None,
        metadata={"help": "look at most this many steps ahead for the outcome; with ahead, exactly this many "
                          "(default: 100; for ahead, the game's horizon: 2 for Pong, its teacher's)"},
    )
    advantage: bool = field(
        default=False,
        metadata={"help": "self-imitation: keep steps whose return-to-go beats their episode's mean (advantage > 0) "
                          "instead of those with a positive return-to-go"},
    )
    reflect_on: str = field(
        default="poor", metadata={"help": "poor: steps with negative return-to-go; all: every step (DAgger-style)"}
    )
    reflection_rate: float = field(default=0.3, metadata={"help": "share of the candidate steps reflected on"})
    max_reflections: int | None = field(default=None, metadata={"help": "cap on reflections (default: none)"})
    completion_reasoning: bool = field(
        default=True,
        metadata={"help": "put the corrected reasoning in the training answer (false: the action alone)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the step sampling"})
    model: str | None = field(
        default=None, metadata={"help": "the acting model for --reflector self (default: the episodes' model column)"}
    )
    batch_size: int = field(default=16, metadata={"help": "steps per reflector call"})
    retries: int = field(default=0, metadata={"help": "re-ask a VLM reflector this many times on a malformed answer"})
    max_new_tokens: int = field(default=128, metadata={"help": "generation budget of a VLM reflector"})
    output_dir: str = field(default="data/reflections", metadata={"help": "where the reflections dataset is written"})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset id to publish to (user/name)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if not self.episodes:
            raise ValueError("--episodes is required: the episodes dataset (local folder or Hub id)")
        if self.reflect_on not in ("poor", "all"):
            raise ValueError(f"--reflect-on must be poor or all, got {self.reflect_on!r}")
        if not 0.0 < self.reflection_rate <= 1.0:
            raise ValueError(f"--reflection-rate must be in (0, 1], got {self.reflection_rate}")
        if self.max_reflections is not None and self.max_reflections < 0:
            raise ValueError(f"--max-reflections must be >= 0, got {self.max_reflections}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.retries < 0 or self.max_new_tokens < 1:
            raise ValueError(f"--retries must be >= 0 and --max-new-tokens >= 1, got {self.retries} and "
                             f"{self.max_new_tokens}")
        if self.outcome_max_steps is not None and self.outcome_max_steps < 1:
            raise ValueError(f"--outcome-max-steps must be >= 1, got {self.outcome_max_steps}")
        check_reflector_spec(self.reflector)  # even when no step is selected: a typo is never accepted
        if self.outcome is not None:
            from vlmrl.games import get_game

            known = get_game(self.game).outcomes
            if self.outcome not in known:
                raise ValueError(f"--outcome {self.outcome!r} is not known for {self.game}: use one of "
                                 f"{', '.join(known)}")
        self.observation_config(self.model)

    def hindsight(self) -> tuple[str, int]:
        """The outcome this run shows and how far ahead it looks: the game's for grounded (Pong: 2 steps
        ahead), the next frame for the writing reflectors; ``ahead`` looks the game's horizon unless told."""
        from vlmrl.games import get_game

        game = get_game(self.game)
        grounded = self.reflector == "grounded" or self.reflector.startswith("grounded:")
        outcome = self.outcome or (game.default_outcome if grounded else "next")
        if self.outcome_max_steps is not None:
            return outcome, self.outcome_max_steps
        return outcome, game.ahead_steps if outcome == "ahead" else 100


def check_reflector_spec(spec: str) -> None:
    """Refuses a ``--reflector`` that names no reflector, and a ``model:`` path that does not exist."""
    if spec in ("self", "oracle", "grounded", "self-imitation"):
        return
    for prefix in ("model:", "grounded:"):
        if spec.startswith(prefix) and len(spec) > len(prefix):
            from vlmrl.models import check_model_reference

            check_model_reference(spec[len(prefix):])
            return
    from vlmrl.reflectors import REFLECTOR_NAMES

    raise ValueError(f"unknown reflector {spec!r}: use {REFLECTOR_NAMES}")


@dataclass
class EvaluateArguments(LoggingArguments, PolicyArguments, EnvArguments):
    """evaluate.py: play held-out seeds under the v5 protocol and write results.json."""

    episodes: int = field(default=10, metadata={"help": "evaluation episodes (seeds 1,000,000 + i: never collected)"})
    first_episode: int = field(default=0, metadata={
        "help": "play held-out games 1,000,000 + first_episode + i instead: other games than the protocol's (0), to "
                "check a choice made on those on games that chose nothing; results.json only, no card, no push"})
    max_steps: int | None = field(
        default=None, metadata={"help": "cap on agent steps per episode (default: the game's own, 27,000 for v5)"}
    )
    num_envs: int = field(default=8, metadata={"help": "environments stepped as one batch"})
    seed: int = field(default=0, metadata={"help": "seed of the policy's sampling (the env seeds are fixed)"})
    output_dir: str = field(default="data/eval", metadata={"help": "where results.json and the video go"})
    video: bool = field(default=True, metadata={"help": "save animated GIFs (action, oracle's action, score drawn)"})
    video_episodes: str = field(
        default="0", metadata={"help": "episodes filmed: numbers like 0,3, or all (results.json's video: the first)"}
    )
    video_max_frames: int = field(default=600, metadata={"help": "frames kept per GIF (every k-th step)"})
    probe: str | None = field(
        default=None, metadata={"help": "vision: also run the vision probe (can the model see the ball?)"}
    )
    probe_frames: int = field(default=500, metadata={"help": "frames the vision probe asks about"})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub model repo whose card receives the results (the evaluated model's)"}
    )
    hub_revision: str | None = field(default=None, metadata={"help": "branch of that repo, e.g. iteration-2"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.num_envs < 1:
            raise ValueError(f"--num-envs must be >= 1, got {self.num_envs}")
        if not 0 <= self.first_episode <= 100_000:
            raise ValueError(f"--first-episode must be from 0 to 100,000, got {self.first_episode}")
        if self.first_episode and self.push_to_hub:
            raise ValueError("--first-episode plays other games than the protocol's: its results are not published "
                             "(leave out --push-to-hub)")
        if self.probe not in (None, "vision"):
            raise ValueError(f"--probe must be vision (or unset), got {self.probe!r}")
        if self.probe == "vision" and self.policy != "model":
            raise ValueError("--probe vision needs a model (--policy model --model ...)")
        if self.probe_frames < 1 or self.video_max_frames < 1:
            raise ValueError(f"--probe-frames and --video-max-frames must be >= 1, got {self.probe_frames} and "
                             f"{self.video_max_frames}")
        self.validate_policy()
