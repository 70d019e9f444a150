"""A tiny model of SmolVLM's architecture (Idefics3), built locally with its own tokenizer.

It is saved with ``save_pretrained`` and loads through exactly the path that loads
``HuggingFaceTB/SmolVLM-Instruct`` (``AutoModelForImageTextToText`` + ``AutoProcessor``),
so every phase runs offline on a 2-core CPU. ``python -m vlmrl.tiny_model --help``.

By default the random-init model then gets a short perception pre-training
(``vlmrl.perception``): it learns to see Pong (where the ball is, which way it moves,
whether it is above or below the paddle) from RAM-derived targets, and nothing about which
action to take. A random-init model never learns to see from action labels alone (FACTS);
one that sees learns to act from few corrections. ``--no-pretrain`` keeps the random init.

``--games`` teaches it to see several games at once (e.g. Pong and Breakout): the tokenizer learns
every game's prompts, action names and caption words, and the same pre-training budget is shared
between the games' frames, each encoded as that game is played (its own playfield crop and
background). The recorded observation (``crop: true``: each game's own crop) serves every game.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vlmrl import cli
from vlmrl.games import Game, get_game, registered_games
from vlmrl.observation import TINY_CONFIG_FILE, ObservationConfig
from vlmrl.perception import (
    PRETRAIN_SEED_BASE,
    WARMUP_TARGETS,
    PretrainConfig,
    collect_perception_data,
    perception_texts,
    pretrain_perception,
)
from vlmrl.probe import DEFAULT_PROBE_SEED
from vlmrl.prompts import REFLECTION_KEYS, acting_messages, format_answer, reflection_messages

DEFAULT_TINY_PATH = "data/models/tiny-smolvlm"
# The game the tiny model is taught to see by default, and whose action names its tokenizer makes single tokens.
GAME = get_game("ALE/Pong-v5")
DEFAULT_GAMES: tuple[Game, ...] = (GAME,)

SPECIAL_TOKENS = [
    "<|im_start|>",
    "<end_of_utterance>",
    "<|pad|>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
]

# SmolVLM's chat template, with generation markers so TRL can mask everything but the answer.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% elif message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% if message['content'] is not string %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for line in message['content'] %}{{ line['text'] }}{% endfor %}<end_of_utterance>"
    "{% endgeneration %}"
    "{% else %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>"
    "{% endif %}"
    "{% else %}<end_of_utterance>{% endif %}"
    "{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Shapes of the tiny model; defaults follow the perception probe in FACTS.md."""

    image_size: int = 128
    patch_size: int = 16
    scale_factor: int = 2
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    vocab_size: int = 1000
    seed: int = 0

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def _tokenizer_corpus(extra_texts: list[str], games: Sequence[Game] = DEFAULT_GAMES) -> list[str]:
    """Text the BPE is trained on: the prompts and answers the model will see, repeated (each game's)."""
    rng = random.Random(0)
    texts: list[str] = []
    for game in games:
        for encoding, n in (("rgb", 1), ("rgb", 2), ("motion", 1)):
            for message in acting_messages(game, game.actions, n, encoding):
                texts += [c["text"] for c in message["content"] if c["type"] == "text"]
    for game in games:
        for message in reflection_messages(
            game, game.actions, action_taken="LEFT", reasoning="r", reward=-1.0, return_to_go=-0.5,
            num_images_now=1, num_images_next=1,
        ):
            texts += [c["text"] for c in message["content"] if c["type"] == "text"]
    words = ["ball", "paddle", "above", "below", "level", "moving", "up", "down", "toward", "away", "stay",
             "row", "column", "at", "is", "the", "my", "your", "so", "to", "meet", "it", "will", "reach",
             "predicted", "intercept", "out", "of", "play", "wait", "centre", "move", "and", "from", "with"]
    for game in games:
        for _ in range(300):
            action = rng.choice(game.actions)
            sentence = " ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 255)}."
            texts.append(format_answer(action, sentence))
            texts.append(json.dumps(dict(zip(REFLECTION_KEYS, [sentence, action, sentence], strict=True))))
    texts += [" ".join(str(i) for i in range(256)), "System: User: Assistant:"]
    for game in games:
        texts += list(game.action_classes) * 50
    return texts * 20 + extra_texts


def tokenizer_inputs(games: Sequence[Game]) -> tuple[list[str], list[str]]:
    """(extra texts, extra tokens) of a tokenizer for these games: their perception prompts and answers,
    and their caption tokens (each once, in the games' order)."""
    texts = [t for game in games for t in perception_texts(game)] * 20
    tokens = list(dict.fromkeys(t for game in games for t in game.caption_vocabulary))
    return texts, tokens


def build_tokenizer(
    vocab_size: int, extra_texts: list[str] = (), extra_tokens: list[str] = (), games: Sequence[Game] = DEFAULT_GAMES
):
    """A byte-level BPE with SmolVLM's special tokens; every action name of the games is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(extra_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(list(extra_texts), games), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<image>", "<fake_token_around_image>", "<global-img>"],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    for action in dict.fromkeys(a for game in games for a in game.actions):
        ids = tokenizer(action, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:  # constrained decoding's single-forward fast path relies on it
            raise RuntimeError(f"tiny tokenizer splits {action!r} into {len(ids)} tokens")
    return tokenizer


def build_processor(config: TinyModelConfig, tokenizer):
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    image_processor = Idefics3ImageProcessorPil(
        do_resize=True,
        size={"longest_edge": config.image_size},
        max_image_size={"longest_edge": config.image_size},
        do_image_splitting=False,
        # Zero mean, unit std: the motion encoding's empty background stays near 0 (never exactly 0).
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=config.image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(config: TinyModelConfig, tokenizer):
    """A seeded, random-init Idefics3ForConditionalGeneration of the tiny shapes."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    model_config = Idefics3Config(
        vision_config={
            "hidden_size": config.vision_hidden,
            "intermediate_size": config.vision_hidden * 4,
            "num_hidden_layers": config.vision_layers,
            "num_attention_heads": config.vision_heads,
            "image_size": config.image_size,
            "patch_size": config.patch_size,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": config.text_hidden,
            "intermediate_size": config.text_hidden * 4,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.text_heads,
            "num_key_value_heads": config.text_heads,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 1024,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": True,
        },
        scale_factor=config.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Idefics3ForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def observation_config(config: TinyModelConfig) -> ObservationConfig:
    """What the tiny model sees: this frame and the previous one in one motion image (FACTS)."""
    return ObservationConfig(frames=2, encoding="motion", crop=True, image_size=config.image_size)


def build_tiny_model(
    output_dir: str | Path,
    config: TinyModelConfig | None = None,
    card_text: str = "",
    *,
    pretrain: PretrainConfig | None = None,
    probe_frames: int = 500,
    progress: bool = False,
    games: Sequence[Game] = DEFAULT_GAMES,
) -> Path:
    """Builds and saves the tiny model, tokenizer and processor; returns the path.

    With ``pretrain`` the random-init model is first taught to see the games (Pong by default;
    perception pre-training, RAM targets, no action labels) and probed on held-out frames of each;
    without it the model stays random (fast, for tests). The build goes to a sibling folder first
    and is moved into place at the end: an interrupted build never looks finished.
    """
    config = config or TinyModelConfig()
    games = tuple(games)
    output_dir = Path(output_dir)
    observation = observation_config(config)
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    tokenizer = build_tokenizer(config.vocab_size, *tokenizer_inputs(games), games=games)
    processor = build_processor(config, tokenizer)
    model = build_model(config, tokenizer)
    report: dict = {} if _is_default(games) else {"games": [g.id for g in games]}
    if pretrain is not None:
        report.update(_pretrain_and_probe(model, processor, observation, pretrain, probe_frames, progress, games))
    report["build_seconds"] = round(time.perf_counter() - start, 1)
    # CPU time beside wall time: on a shared machine the wall time says more about the neighbours.
    report["build_cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    report["torch_threads"] = torch.get_num_threads()
    report["load_average"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    report["weights_sha256"] = weights_checksum(model)
    report["cpu_capability"] = torch.backends.cpu.get_cpu_capability()

    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    recipe = _recipe(config, observation, pretrain, games)
    (staging / TINY_CONFIG_FILE).write_text(json.dumps({**recipe, "report": report}, indent=2))
    n_params = sum(p.numel() for p in model.parameters())
    from vlmrl.cards import observation_section

    body = card_text + _card_body(recipe, report, games) + "\n" + observation_section(
        observation, games[0].id, model_path=str(output_dir))
    if len(games) > 1:
        body += (f"\nThe same observation serves {_names(games[1:])}: `crop: true` is each game's own playfield crop "
                 f"(rows {', '.join(f'{g.name} {g.crop_rows()[0]}-{g.crop_rows()[1] - 1}' for g in games)}), "
                 "and the motion image subtracts each game's own background; pass `game=` of the game played.\n")
    write_model_card(staging, config, body, n_params, games)
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    return output_dir


def _weights_text(weights: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in weights.items())


def _is_default(games: Sequence[Game]) -> bool:
    return [g.id for g in games] == [g.id for g in DEFAULT_GAMES]


def _names(games: Sequence[Game]) -> str:
    return " and ".join(g.name for g in games)


def _recipe(
    config: TinyModelConfig,
    observation: ObservationConfig,
    pretrain: PretrainConfig | None,
    games: Sequence[Game] = DEFAULT_GAMES,
) -> dict:
    """Everything that decides the weights: a build with the same recipe is the same model.

    Beside the shapes and the pre-training settings: a digest of the text the tokenizer is trained
    on (the prompts' wording) and the player of the pre-training's varied play (the game's oracle).
    A build for other games than the default (Pong) records them, and an oracle per game; the
    default's recipe has no "games" key, so Pong builds recorded before the option still count."""
    recipe = {
        **asdict(config),
        "observation": asdict(observation),
        "pretrain": _pretrain_recipe(pretrain),
        "tokenizer_text_sha256": _text_digest(tuple(g.id for g in games)),
        "varied_play": None,
    }
    if _is_default(games):
        recipe["varied_play"] = repr(GAME.oracle()) if pretrain is not None else None
        return recipe
    if pretrain is not None:
        recipe["varied_play"] = [repr(g.oracle()) for g in games]
    return {**recipe, "games": [g.id for g in games]}


@lru_cache(maxsize=4)
def _text_digest(game_ids: tuple[str, ...]) -> str:
    games = [get_game(g) for g in game_ids]
    corpus = "\n".join(_tokenizer_corpus([t for g in games for t in perception_texts(g)], games))
    return hashlib.sha256(corpus.encode()).hexdigest()[:16]


# What the card says the warm-up learns beside the probe's questions.
_WARMUP_TARGET_WORDS = {"questions+positions": " and the scene positions",
                        "questions+paddle": " and the paddle's position"}
# Pre-training options added after builds were recorded, with what those builds did: a recipe that does the
# same leaves the option out, so those builds still count as "the same recipe".
_OPTIONS_RECORDED_LATER = {"physics_caption": False, "vision_warmup_steps": 0, "vision_warmup_targets": "questions"}


def _pretrain_recipe(pretrain: PretrainConfig | None) -> dict | None:
    if pretrain is None:
        return None
    recipe = asdict(pretrain)
    for option, before in _OPTIONS_RECORDED_LATER.items():
        if recipe[option] == before:
            del recipe[option]
    return recipe


def built_recipe(output_dir: str | Path) -> dict | None:
    """The recipe of the model built at ``output_dir``, or None when there is none."""
    path = Path(output_dir)
    if not (path / "config.json").is_file() or not (path / TINY_CONFIG_FILE).is_file():
        return None
    recorded = json.loads((path / TINY_CONFIG_FILE).read_text())
    recorded.pop("report", None)
    return recorded


def frames_per_game(total: int, games: int) -> list[int]:
    """The pre-training's frames shared between the games: as even as it goes, the first games first."""
    return [total // games + (i < total % games) for i in range(games)]


def _pretrain_and_probe(
    model, processor, observation, pretrain: PretrainConfig, probe_frames: int, progress: bool,
    games: Sequence[Game] = DEFAULT_GAMES,
) -> dict:
    """Probes the random init, pre-trains on every game's frames at once, probes again: the report.

    The default (Pong) build's probe is ``{"random_init", "pretrained"}``; a build for other games
    has one such probe per game, ``{game id: {...}}``."""
    from vlmrl.probe import collect_probe_frames, probe_model

    probes: dict[str, dict] = {g.id: {} for g in games}
    probe_samples = {}
    if probe_frames > 0:
        for game in games:
            probe_samples[game.id] = collect_probe_frames(game, probe_frames, DEFAULT_PROBE_SEED,
                                                          history=observation.frames)
            probes[game.id]["random_init"] = probe_model(model, processor, probe_samples[game.id], observation,
                                                         game=game)
    t = time.perf_counter()
    data = [
        collect_perception_data(n, observation, game=game, seed=PRETRAIN_SEED_BASE + 10_000 * pretrain.seed,
                                progress=progress)
        for game, n in zip(games, frames_per_game(pretrain.frames, len(games)), strict=True)
    ]
    report: dict = {"probe": probes[GAME.id] if _is_default(games) else probes}
    report["data_seconds"] = round(time.perf_counter() - t, 1)
    if not _is_default(games):
        report["frames_by_game"] = {d.game.id: len(d) for d in data}
    result = pretrain_perception(model, processor, data[0] if len(data) == 1 else data, observation, pretrain,
                                 progress=progress)
    report["pretrain"] = result.summary()
    if not probe_samples:
        report["probe"] = {}
    for game in games if probe_samples else ():
        probes[game.id]["pretrained"] = probe_model(model, processor, probe_samples[game.id], observation, game=game)
    return report


def weights_checksum(model) -> str:
    """SHA-256 of every parameter's bytes, in name order: two builds are the same model iff it matches."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _card_body(recipe: dict, report: dict, games: Sequence[Game] = DEFAULT_GAMES) -> str:
    from vlmrl.probe import format_probe_table

    pretrain = recipe["pretrain"]
    checksum = f"Weights SHA-256 `{report.get('weights_sha256')}` (CPU kernels: {report.get('cpu_capability')}).\n"
    if pretrain is None:
        return "## Weights\n\nRandom initialisation (seed {seed}): it has seen nothing.\n".format(**recipe) + checksum
    if len(games) == 1:
        caption = ("a 6-token caption (ball above/below the paddle, ball row, column, paddle row in 16 buckets or "
                   "`<noball>`, vertical and horizontal direction; above/below and the directions are the probe's "
                   "answer words)")
        frames = f"{pretrain['frames']:,} observations of varied play ("
    else:
        caption = ("a 6-token caption in the game's own words (where the ball is beside the paddle: Pong above/below, "
                   "Breakout left/right; ball row, column, the paddle's place in 16 buckets or `<noball>`, vertical "
                   "and horizontal direction)")
        shares = ", ".join(f"{n:,} of {get_game(g).name}" for g, n in report.get("frames_by_game", {}).items())
        frames = f"{pretrain['frames']:,} observations of varied play ({shares}, shuffled together; "
    warmup_steps = report.get("pretrain", {}).get("vision_warmup_steps", 0)
    body = [
        "## Perception pre-training\n",
        f"Taught to see {_names(games)}, not to play {'it' if len(games) == 1 else 'them'}: {frames}"
        "the RAM oracle with a random action at rate 0.5, or random play), encoded as the agent encodes "
        f"them ({recipe['observation']}), episode seeds from {PRETRAIN_SEED_BASE + 10_000 * pretrain['seed']:,}. "
        f"Targets come from the RAM only: {caption} or one of the probe's "
        f"questions ({1 - pretrain['caption_fraction']:.0%} of samples), loss on every answer token. "
        "No action labels, no action names.\n",
        *([f"First a vision warm-up: the vision tower alone learns the probe's questions"
           f"{_WARMUP_TARGET_WORDS.get(pretrain.get('vision_warmup_targets'), '')}"
           f" from linear answers on its pooled patch features (dropped afterwards), {warmup_steps:,} steps.\n"]
          if warmup_steps else []),
        "| setting | value |\n|---|---|",
        *[f"| {k} | {v} |" for k, v in pretrain.items()],
        "",
        "| result | value |\n|---|---|",
        *[f"| {k} | {v} |" for k, v in report.get("pretrain", {}).items()],
        f"| frame generation (s) | {report.get('data_seconds')} |",
        f"| whole build, wall (s) | {report.get('build_seconds')} |",
        f"| whole build, CPU (s) | {report.get('build_cpu_seconds')} ({report.get('torch_threads')} torch threads) |",
        f"| load average (start, end) | {report.get('load_average')} |",
        "",
        checksum,
    ]
    probes = report.get("probe")
    if probes and len(games) == 1:
        probes = {games[0].id: probes}
    for game_id, probe in (probes or {}).items():
        where = "" if len(games) == 1 else f"{get_game(game_id).name}, "
        body += [
            f"## Vision probe ({where}held-out seeds from {DEFAULT_PROBE_SEED}, accuracy beside chance)\n",
            format_probe_table(probe),
            "",
        ]
    return "\n".join(body)


def write_model_card(
    output_dir: Path, config: TinyModelConfig, body: str = "", n_params: int | None = None,
    games: Sequence[Game] = DEFAULT_GAMES,
) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    if n_params is None:
        n_params = sum(p.numel() for p in _load_for_count(output_dir).parameters())
    data = ModelCardData(
        library_name="transformers", pipeline_tag="image-text-to-text",
        tags=["vlmrl", "atari", *(g.name.lower() for g in games)],
    )
    shapes = "\n".join(f"- {k}: {v}" for k, v in asdict(config).items())
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# tiny-smolvlm\n\n"
        f"A tiny model of SmolVLM's architecture (Idefics3) built locally by vlmrl, {n_params / 1e6:.2f} M parameters, "
        f"{config.image_seq_len} image tokens per image.\n\n## Shapes\n\n{shapes}\n\n{body}\n"
    )
    ModelCard(text).save(output_dir / "README.md")


def _load_for_count(path: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path)


def parse_games(text: str) -> tuple[Game, ...]:
    """``--games``: comma-separated ids ("ALE/Pong-v5") or names ("pong") of games the model can be taught to
    see (a registered game with an oracle for varied play and perception targets); a ValueError names them."""
    seeable = [g for g in registered_games() if g.has_oracle and g.questions and g.caption_prompt]
    known = {g.name.lower(): g for g in seeable}
    names = ", ".join(f"{g.default_id} ({g.name.lower()})" for g in seeable)
    games = []
    for item in (t.strip() for t in text.split(",")):
        game = known.get(item.lower()) if item else None
        if game is None and item:
            resolved = get_game(item)
            game = resolved if resolved.name.lower() in known else None
        if game is None:
            raise ValueError(f"--games: unknown game {item!r}; the tiny model can be taught to see: {names}")
        if any(g.name == game.name for g in games):
            raise ValueError(f"--games: {game.name} is named twice")
        games.append(game)
    return tuple(games)


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(
        description="Build the tiny SmolVLM-architecture model of the tiny recipe: random init, then a short "
        "perception pre-training on Pong frames (or those of --games; RAM targets, no action labels) so it can "
        "see but not play."
    )
    parser.add_argument("--output-dir", default=DEFAULT_TINY_PATH, help="where to save it (default %(default)s)")
    parser.add_argument(
        "--games", default=GAME.id,
        help="comma-separated games it is taught to see, e.g. ALE/Pong-v5,ALE/Breakout-v5 or pong,breakout: the "
        "tokenizer learns each one's prompts, actions and captions, and the pre-training's frames are shared "
        "between them, the same budget in all (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the data and the training")
    parser.add_argument(
        "--image-size", type=int, default=TinyModelConfig.image_size,
        help="side of the observation image in pixels, a multiple of 32 (default %(default)s; 160 is Pong's cropped "
        "playfield pixel for pixel: ball and paddle positions exact)",
    )
    shape = TinyModelConfig()
    for flag, default, what in (
        ("--text-hidden", shape.text_hidden, "width of the language model"),
        ("--text-layers", shape.text_layers, "layers of the language model"),
        ("--vision-hidden", shape.vision_hidden, "width of the vision encoder"),
        ("--vision-layers", shape.vision_layers, "layers of the vision encoder"),
        ("--patch-size", shape.patch_size, "side of the vision encoder's patches in pixels (the image side must be a "
         "multiple of twice it; 8 gives four times the image tokens)"),
    ):
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if this recipe is already built there")
    parser.add_argument("--no-pretrain", action="store_true", help="keep the random initialisation (fast; for tests)")
    defaults = PretrainConfig()
    parser.add_argument(
        "--pretrain-frames", type=int, default=defaults.frames,
        help="observations of varied play to pre-train on (default %(default)s)",
    )
    parser.add_argument(
        "--pretrain-epochs", type=float, default=defaults.epochs,
        help="passes over them; fractions allowed (default %(default)s)",
    )
    parser.add_argument(
        "--physics-caption", action="store_true",
        help="also caption where the ball will cross your paddle's column and where your paddle would come to "
        "rest (the physics the oracle's decisions turn on; still no action labels)",
    )
    parser.add_argument(
        "--question-weights", default=None,
        help="relative weights of the probe's questions in the pre-training, e.g. above_below=2,horizontal=3 "
        f"(questions not named weigh 1; default {_weights_text(defaults.question_weights)})",
    )
    parser.add_argument(
        "--vision-warmup-steps", type=int, default=None,
        help="steps teaching the vision tower alone the probe's questions (linear answers on its features, "
        f"dropped afterwards) before the captions (default {defaults.vision_warmup_steps} per game in --games)",
    )
    parser.add_argument(
        "--vision-warmup-targets", choices=WARMUP_TARGETS, default=defaults.vision_warmup_targets,
        help="what the warm-up teaches: the probe's questions, or also the scene's positions (regressions on "
        "the ball's and paddle's rows and column, where the ball will cross, where the teacher aims, where "
        "the paddle would rest; still no action), or also the paddle's position alone (its row in Pong, "
        "column in Breakout) (default %(default)s)",
    )
    parser.add_argument(
        "--probe-frames", type=int, default=500,
        help="held-out frames the vision probe scores before and after pre-training; 0 skips it (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default %(default)s; 0: torch's default). One thread gives the same weights "
        "for a seed whatever the core count, and is robust on a shared CPU, where two threads ran ~10x slower",
    )
    args = parser.parse_args(argv)
    try:
        games = parse_games(args.games)
    except ValueError as err:
        parser.error(str(err))
    if not args.no_pretrain and args.pretrain_frames < len(games):
        parser.error(f"--pretrain-frames must give each of the {len(games)} games a frame, got {args.pretrain_frames}")
    if args.patch_size < 1:
        parser.error(f"--patch-size must be at least 1, got {args.patch_size}")
    tile = args.patch_size * shape.scale_factor
    if args.image_size < tile or args.image_size % tile:
        parser.error(f"--image-size must be a positive multiple of {tile} (patch {args.patch_size}, scale "
                     f"{shape.scale_factor}), got {args.image_size}")
    for name, heads in (("text_hidden", shape.text_heads), ("vision_hidden", shape.vision_heads)):
        value = getattr(args, name)
        if value < heads or value % heads:
            parser.error(f"--{name.replace('_', '-')} must be a positive multiple of {heads} (attention heads), "
                         f"got {value}")
    for name in ("text_layers", "vision_layers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    config = TinyModelConfig(seed=args.seed, image_size=args.image_size, text_hidden=args.text_hidden,
                             text_layers=args.text_layers, vision_hidden=args.vision_hidden,
                             vision_layers=args.vision_layers, patch_size=args.patch_size)
    pretrain = None
    if not args.no_pretrain:
        try:
            if args.physics_caption and any(g.name != GAME.name for g in games):
                raise ValueError("--physics-caption is Pong's alone: leave the other games out of --games")
            settings = dict(frames=args.pretrain_frames, epochs=args.pretrain_epochs, seed=args.seed,
                            physics_caption=args.physics_caption, vision_warmup_targets=args.vision_warmup_targets)
            if args.question_weights is not None:
                settings["question_weights"] = cli.number_pairs(
                    args.question_weights, "--question-weights", "name=weight", "above_below=2")
            if args.vision_warmup_steps is not None:  # else the recipe's own: 1,000 a game (for_games)
                settings["vision_warmup_steps"] = args.vision_warmup_steps
            # Pong alone: the default recipe as it always was (its key question weighed 2 in the defaults).
            pretrain = PretrainConfig(**settings) if _is_default(games) else PretrainConfig.for_games(games, **settings)
            pretrain.check_questions(games)
        except ValueError as err:
            parser.error(str(err))
    out = Path(args.output_dir)
    wanted = _recipe(config, observation_config(config), pretrain, games)
    existing = built_recipe(out)
    if existing == wanted and not args.force:
        print(f"tiny model already built at {out} with this recipe (use --force to rebuild)")
        return
    if existing is not None and existing != wanted:
        print(f"the tiny model at {out} was built with another recipe: rebuilding")
    threads = torch.get_num_threads()
    if args.threads:  # for this build only: main() is also called in-process (tests)
        torch.set_num_threads(args.threads)
    try:
        build_tiny_model(out, config, pretrain=pretrain, probe_frames=args.probe_frames, progress=True, games=games)
    finally:
        torch.set_num_threads(threads)
    report = json.loads((out / TINY_CONFIG_FILE).read_text())["report"]
    print(json.dumps({"output_dir": str(out), **report}))
    for warning in stall_warnings(report, games):
        print(f"warning: {warning}; the same command with --seed {args.seed + 1} builds another (see README, "
              "Reproducibility)", file=sys.stderr)


def stall_warnings(report: dict, games: Sequence[Game]) -> list[str]:
    """One line per game whose built base answers its key question below the game's floor on the probe's
    held-out frames (a build that stalled: it never learned to see what that question asks)."""
    probes = report.get("probe") or {}
    out = []
    for game in games:
        probe = probes[game.id] if game.id in probes else probes  # (one game's record is that game's probe)
        answer = (probe.get("pretrained") or {}).get(game.key_question or "", {})
        floor = game.key_question_floor
        if floor is not None and "accuracy" in answer and answer["accuracy"] < floor:
            out.append(f"{game.name}'s probe answers {game.key_question} {answer['accuracy']:.3f}, below the "
                       f"{floor} of builds that learned to see it: this build may have stalled")
    return out


if __name__ == "__main__":
    cli.run(main)
