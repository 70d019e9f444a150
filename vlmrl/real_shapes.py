"""Random-init models with the published shapes of SmolVLM-256M, -500M and -Instruct (2B), built offline.

No weights can be downloaded here (FACTS), but shapes, memory and speed do not depend on the weights'
values: a random-init Idefics3 model of the real sizes, saved with ``save_pretrained``, loads through
the same ``from_pretrained`` path as ``HuggingFaceTB/SmolVLM-Instruct`` and runs the seed's recipe as
the real model would, minus the sense of what it says.

The tokenizer is NOT SmolLM2's (it cannot be downloaded): a byte-level BPE trained here on the project's
prompts and answers, with SmolVLM's special tokens and chat template. It is small (a few thousand
tokens); the embedding matrix still has the published vocabulary size, so memory and the LM head cost
are the real ones. Unlike the tiny model's tokenizer, it does not make action names single tokens: the
corpus spells them in pieces (``NO OP``, ``RIGHT FIRE``), so ``NOOP``, ``RIGHTFIRE`` and ``LEFTFIRE`` take
two tokens each, as they do in a real BPE vocabulary, and constrained decoding takes its multi-token path.

    python -m vlmrl.real_shapes --size 256M --output-dir data/models/smolvlm-256m-random
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vlmrl.games.pong import ACTIONS as PONG_ACTIONS
from vlmrl.tiny_model import CHAT_TEMPLATE, SPECIAL_TOKENS

RECIPE_TILE = 384  # recipes/SmolVLM-Instruct/pong/*.yaml: image_size 384, one tile, no splitting
SHAPES_FILE = "real_shapes.json"

# How the tokenizer's training corpus spells each action: in pieces, so no action name becomes one token.
ACTION_PIECES = {"NOOP": "NO OP", "FIRE": "FIRE", "RIGHT": "RIGHT", "LEFT": "LEFT",
                 "RIGHTFIRE": "RIGHT FIRE", "LEFTFIRE": "LEFT FIRE"}


@dataclass(frozen=True)
class RealShape:
    """The sizes of one published SmolVLM checkpoint (vision tower, connector, text model)."""

    name: str
    hub_id: str
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    vocab_size: int
    rope_theta: float
    max_position_embeddings: int
    scale_factor: int
    image_seq_len: int  # the published image tokens per native tile
    tie_word_embeddings: bool

    def tile_tokens(self, tile: int) -> int:
        """Image tokens for one square tile of ``tile`` pixels: (tile // patch)² / scale².

        The vision tower takes any tile up to its image size (patch positions are bucketed), so the
        recipe's 384-px tile also fits the 512-px towers of the 256M and 500M, with fewer tokens.
        """
        if not 0 < tile <= self.image_size:
            raise ValueError(f"tile {tile} px: the {self.name} vision tower takes 1..{self.image_size} px")
        side = tile // self.patch_size
        if side % self.scale_factor:
            raise ValueError(
                f"tile {tile} px gives {side} patches a side ({self.patch_size}-px patches), not a multiple of "
                f"the pixel-shuffle scale factor {self.scale_factor}: the connector cannot fold it"
            )
        return (side // self.scale_factor) ** 2


# Published configurations. The config.json files cannot be downloaded here; each number below was read
# from a public copy, cited beside it.
#
# [256M-cfg] https://huggingface.co/Mattimax/DATA-AI_Smol256M-Instruct/blob/main/config.json, a copy whose
#            _name_or_path is HuggingFaceTB/SmolVLM-256M-Instruct: scale_factor 4; text hidden 576,
#            intermediate 1536, 30 layers, 9 heads, 3 kv heads, head_dim 64, max positions 8192.
# [256M-card] the SmolVLM-256M-Instruct model card (https://hf-mirror.492719920.workers.dev./HuggingFaceTB/
#            SmolVLM-256M-Instruct and its copy in github.com/xi-ix/smolvlm_256m_ft SmolVLM-256M-Instruct/
#            README.md): base models google/siglip-base-patch16-512 and SmolLM2-135M-Instruct; "64 visual
#            tokens to encode image patches of size 512x512"; a 93M vision encoder.
# [siglip-b] SigLIP base patch16 512 as used by SmolVLM(2) 256M/500M: hidden 768, intermediate 3072,
#            12 layers, 12 heads, patch 16, image 512 (https://mintlify.wiki/kvark/meganeura/models/smolvlm2,
#            which also gives vocab 49280 and rope theta 100000 for the 500M text model).
# [256M-gen] https://huggingface.co/HuggingFaceTB/SmolVLM-256M-Instruct/blob/a7f60d8.../generation_config.json:
#            eos_token_id 49279, i.e. the last id of a 49280-entry vocabulary.
# [256M-size] https://huggingface.co/HuggingFaceTB/SmolVLM-256M-Instruct/tree/982ff50...: model.safetensors
#            513 MB in bf16 = 256.5 M parameters = the 228.1 M of these shapes with tied embeddings + a separate
#            49280 x 576 LM head (28.4 M): the VLM does not tie them (parameter_count reproduces the 256.5 M).
# [500M-size] https://huggingface.co/HuggingFaceTB/SmolVLM2-500M-Video-Instruct/tree/main (same shapes):
#            model.safetensors 2.03 GB in fp32 = 507 M = 460.2 M tied + a 49280 x 960 head (47.3 M): untied.
# [135M-rope] https://huggingface.co/cduba/nanoVLM/blob/main/config.json: SmolLM2-135M with lm_re_base 100000.
# [500M-cfg] https://huggingface.co/vidore/ColSmolVLM-Instruct-500M-base/blob/27476f0.../config.json (built on
#            SmolVLM-Instruct-500M): scale_factor 4; text hidden 960, intermediate 2560, 15 heads, 5 kv heads,
#            head_dim 64, max positions 8192.
# [360M-cfg] https://huggingface.co/davanstrien/Smol-Hub-tldr/blob/refs%2Fpr%2F1/config.json (_name_or_path
#            HuggingFaceTB/SmolLM2-360M): 32 layers, rope_theta 100000, tied embeddings.
# [2B-cfg]   a public test fixture that mirrors the released HuggingFaceTB/SmolVLM-Instruct config.json (found
#            in the code index) and https://huggingface.co/frontrx/ECGv3/blob/main/config.json (a fine-tune of
#            HuggingFaceTB/SmolVLM-Base): image_seq_len 81, scale_factor 3, untied embeddings; text hidden 2048,
#            intermediate 8192, 24 layers, 32 heads, 32 kv heads, head_dim 64, rope_theta 273768, vocab 49155,
#            max positions 16384; vision hidden 1152, intermediate 4304, 27 layers, 16 heads, patch 14,
#            image 384 (google/siglip-so400m-patch14-384, the base model named by the SmolVLM-Base card).
# [2B-card]  https://huggingface.co/HuggingFaceTB/SmolVLM-Instruct/blob/1b1b4a5.../README.md: "81 visual tokens
#            to encode image patches of size 384*384"; RoPE base raised from 10k to 273k for a 16k context.
SHAPES: dict[str, RealShape] = {
    "256M": RealShape(
        name="256M", hub_id="HuggingFaceTB/SmolVLM-256M-Instruct",
        image_size=512, patch_size=16,  # [256M-card], [siglip-b]
        vision_hidden=768, vision_intermediate=3072, vision_layers=12, vision_heads=12,  # [siglip-b]
        text_hidden=576, text_intermediate=1536, text_layers=30, text_heads=9, text_kv_heads=3,  # [256M-cfg]
        vocab_size=49280,  # [256M-gen], [siglip-b]
        rope_theta=100000.0,  # [135M-rope]
        max_position_embeddings=8192, scale_factor=4,  # [256M-cfg]
        image_seq_len=64,  # [256M-card]: (512/16)² / 4² = 64
        tie_word_embeddings=False,  # [256M-size]
    ),
    "500M": RealShape(
        name="500M", hub_id="HuggingFaceTB/SmolVLM-500M-Instruct",
        image_size=512, patch_size=16,  # the same 93M encoder as the 256M ([siglip-b])
        vision_hidden=768, vision_intermediate=3072, vision_layers=12, vision_heads=12,  # [siglip-b]
        text_hidden=960, text_intermediate=2560, text_heads=15, text_kv_heads=5,  # [500M-cfg]
        text_layers=32,  # [360M-cfg]
        vocab_size=49280,  # [siglip-b]
        rope_theta=100000.0,  # [360M-cfg], [siglip-b]
        max_position_embeddings=8192, scale_factor=4,  # [500M-cfg]
        image_seq_len=64,
        tie_word_embeddings=False,  # [500M-size] (SmolLM2-360M alone ties them, [360M-cfg])
    ),
    "2B": RealShape(
        name="2B", hub_id="HuggingFaceTB/SmolVLM-Instruct",
        image_size=384, patch_size=14,  # [2B-cfg], [2B-card]
        vision_hidden=1152, vision_intermediate=4304, vision_layers=27, vision_heads=16,  # [2B-cfg]
        text_hidden=2048, text_intermediate=8192, text_layers=24, text_heads=32, text_kv_heads=32,  # [2B-cfg]
        vocab_size=49155,  # [2B-cfg]
        rope_theta=273768.0,  # [2B-cfg], [2B-card]
        max_position_embeddings=16384, scale_factor=3,  # [2B-cfg]
        image_seq_len=81,  # [2B-cfg]: (384 // 14)² / 3² = 27² / 9 = 81
        tie_word_embeddings=False,  # [2B-cfg]
    ),
}
SIZE_NAMES = ", ".join(SHAPES)


def get_shape(size: str) -> RealShape:
    """The published shape called ``size`` (256M, 500M or 2B; case-insensitive)."""
    for name, shape in SHAPES.items():
        if size.strip().upper() == name.upper():
            return shape
    raise ValueError(f"unknown size {size!r}: use one of {SIZE_NAMES}")


def reduced_shape(size: str, *, width: int = 32, layers: int = 1, vocab_size: int | None = None) -> RealShape:
    """The published shape of ``size`` shrunk for fast tests: the same tile, patch and scale factor (so the
    same image-token arithmetic and processor), narrow and shallow towers, heads that divide the width."""
    shape = get_shape(size)
    heads = 4
    return replace(
        shape, name=f"{shape.name}-reduced",
        vision_hidden=width, vision_intermediate=width * 4, vision_layers=layers, vision_heads=heads,
        text_hidden=width, text_intermediate=width * 4, text_layers=layers, text_heads=heads,
        text_kv_heads=heads if shape.text_kv_heads == shape.text_heads else heads // 2,
        vocab_size=vocab_size or shape.vocab_size,
    )


def parameter_count(shape: RealShape) -> dict[str, int]:
    """Parameters of the model of ``shape``, by part, from its sizes alone (no model built)."""
    v = shape.vision_hidden
    patches = (shape.image_size // shape.patch_size) ** 2
    vision = (
        3 * shape.patch_size**2 * v + v + patches * v  # patch embedding (conv + bias), position embedding
        + shape.vision_layers * (4 * (v * v + v) + 2 * v * shape.vision_intermediate + shape.vision_intermediate + v
                                 + 4 * v)  # q k v o with biases, MLP with biases, two layer norms
        + 2 * v  # post layer norm
    )
    connector = v * shape.scale_factor**2 * shape.text_hidden  # pixel-shuffled features -> text width, no bias
    h, head_dim = shape.text_hidden, shape.text_hidden // shape.text_heads
    kv = shape.text_kv_heads * head_dim
    text_layers = shape.text_layers * (h * h * 2 + 2 * h * kv + 3 * h * shape.text_intermediate + 2 * h)
    embed = shape.vocab_size * h
    lm_head = 0 if shape.tie_word_embeddings else shape.vocab_size * h
    total = vision + connector + text_layers + embed + h + lm_head
    return {"vision": vision, "connector": connector, "text_layers": text_layers, "embeddings": embed,
            "lm_head": lm_head, "total": total}


def _corpus() -> list[str]:
    """What the BPE learns from: the prompts and answers the model meets, action names spelled in pieces."""
    from vlmrl.games import get_game

    game = get_game("ALE/Pong-v5")
    from vlmrl.prompts import REFLECTION_KEYS, acting_messages, format_answer, reflection_messages

    def spell(text: str) -> str:
        for action in sorted(PONG_ACTIONS, key=len, reverse=True):
            text = text.replace(action, ACTION_PIECES[action].replace(" ", "\x00"))
        return text.replace("\x00", " ")

    rng = random.Random(0)
    texts = []
    for n in (1, 2):
        for message in acting_messages(game, PONG_ACTIONS, n, "rgb"):
            texts += [c["text"] for c in message["content"] if c["type"] == "text"]
    for message in reflection_messages(game, PONG_ACTIONS, action_taken="LEFT", reasoning="r", reward=-1.0,
                                       return_to_go=-0.5, num_images_now=1, num_images_next=1):
        texts += [c["text"] for c in message["content"] if c["type"] == "text"]
    words = ("the ball is above below level with my paddle moving up down toward away from me so I move to meet it "
             "it will reach the right edge at row column stay wait centre out of play score point lost won hit miss "
             "because should have moved instead earlier later opponent wall bounce fast slow frame next").split()
    for _ in range(400):
        action = rng.choice(PONG_ACTIONS)
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(6, 16))) + f" {rng.randint(0, 255)}."
        texts.append(format_answer(action, sentence))
        texts.append(json.dumps(dict(zip(REFLECTION_KEYS, [sentence, action, sentence], strict=True))))
    texts += ["System: User: Assistant:", " ".join(str(i) for i in range(256))]
    return [spell(t) for t in texts] * 10


def build_tokenizer(vocab_cap: int = 4096):
    """A byte-level BPE with SmolVLM's special tokens and chat template; action names are NOT single tokens.

    At most ``vocab_cap`` entries (the small corpus supports a few thousand); the model's embedding keeps
    the published vocabulary size, the ids above the tokenizer's length simply never come from text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_cap, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|pad|>",
        unk_token=None, additional_special_tokens=["<image>", "<fake_token_around_image>", "<global-img>"],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if all(len(tokenizer(a, add_special_tokens=False)["input_ids"]) == 1 for a in PONG_ACTIONS):
        raise RuntimeError("every action name became one token: the multi-token path would go untested")
    return tokenizer


def action_token_counts(tokenizer) -> dict[str, int]:
    """Tokens per Pong action name (after the answer prefix's quote, where constrained decoding scores them)."""
    return {a: len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in PONG_ACTIONS}


def build_processor(shape: RealShape, tokenizer, tile: int = RECIPE_TILE):
    """Idefics3 processor as the recipe sets it: one ``tile``-px tile per frame, no splitting, with the
    image-token count that tile gives this vision tower (81 for the 2B at 384, 36 for the 256M/500M)."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    image_processor = Idefics3ImageProcessorPil(
        do_resize=True,
        size={"longest_edge": tile},
        max_image_size={"longest_edge": tile},
        do_image_splitting=False,
        image_mean=[0.5, 0.5, 0.5],  # SmolVLM's published preprocessor normalisation
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=shape.tile_tokens(tile), chat_template=CHAT_TEMPLATE)


def model_config(shape: RealShape, tokenizer):
    """The Idefics3Config of ``shape`` with this tokenizer's special ids."""
    from transformers import Idefics3Config

    if len(tokenizer) > shape.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} entries, more than the {shape.vocab_size}-entry embedding")
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    return Idefics3Config(
        vision_config={
            "hidden_size": shape.vision_hidden,
            "intermediate_size": shape.vision_intermediate,
            "num_hidden_layers": shape.vision_layers,
            "num_attention_heads": shape.vision_heads,
            "image_size": shape.image_size,
            "patch_size": shape.patch_size,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": shape.text_hidden,
            "intermediate_size": shape.text_intermediate,
            "num_hidden_layers": shape.text_layers,
            "num_attention_heads": shape.text_heads,
            "num_key_value_heads": shape.text_kv_heads,
            "head_dim": shape.text_hidden // shape.text_heads,
            "vocab_size": shape.vocab_size,
            "rope_theta": shape.rope_theta,
            "max_position_embeddings": shape.max_position_embeddings,
            "tie_word_embeddings": shape.tie_word_embeddings,
            **ids,
        },
        scale_factor=shape.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(shape: RealShape, tokenizer, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A seeded random-init Idefics3ForConditionalGeneration of ``shape``, created directly in ``dtype``
    (bf16 like the published checkpoints: the 2B in fp32 would need ~9 GB just to be built)."""
    from transformers import Idefics3ForConditionalGeneration

    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration._from_config(model_config(shape, tokenizer), dtype=dtype)
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model.eval()


def build_real_shapes_model(
    output_dir: str | Path, shape: RealShape, *, tile: int = RECIPE_TILE, dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Path:
    """Builds and saves model, tokenizer and processor of ``shape`` into ``output_dir``; returns the path.

    The build goes to a sibling ``.partial`` folder first and is renamed at the end: an interrupted build
    never looks finished.
    """
    output_dir = Path(output_dir)
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    processor = build_processor(shape, tokenizer, tile)
    model = build_model(shape, tokenizer, dtype=dtype, seed=seed)
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    n_params = sum(p.numel() for p in model.parameters())
    record = {
        "shape": asdict(shape), "tile": tile, "image_tokens_per_tile": shape.tile_tokens(tile),
        "dtype": str(dtype).removeprefix("torch."), "seed": seed, "parameters": n_params,
        "tokenizer_size": len(tokenizer), "action_tokens": action_token_counts(tokenizer),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (staging / SHAPES_FILE).write_text(json.dumps(record, indent=2))
    (staging / "README.md").write_text(
        f"# SmolVLM-{shape.name} shapes, random init\n\nBuilt offline by `python -m vlmrl.real_shapes`: the "
        f"architecture and sizes of [{shape.hub_id}](https://huggingface.co/{shape.hub_id}) "
        f"({n_params / 1e6:.1f} M parameters) with random weights (seed {seed}) and a small BPE tokenizer "
        "trained on vlmrl's prompts. For shapes, memory and speed only: it has learnt nothing.\n"
    )
    del model
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    return output_dir


def _writable_dir(path: Path) -> None:
    """Raises PermissionError (a user mistake) when ``path`` cannot be created and written."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create {parent}: {err.strerror}") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"cannot write to {path}: permission denied")


def main(argv: list[str] | None = None) -> Path:
    """``python -m vlmrl.real_shapes``: build one size; a user mistake is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(
        description="Build a random-init SmolVLM (Idefics3) with the published shapes of one checkpoint, offline, "
        "saved so the project's scripts load it like the Hub model. For shapes, memory and speed checks only."
    )
    parser.add_argument("--size", default="256M", help=f"which checkpoint's shapes: {SIZE_NAMES} (default %(default)s)")
    parser.add_argument("--output-dir", default=None,
                        help="where to save it (default data/models/smolvlm-<size>-random)")
    parser.add_argument("--tile", type=int, default=RECIPE_TILE,
                        help="image side the processor makes of every frame, one tile, no splitting; the recipe's "
                        "is %(default)s (default %(default)s)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="dtype of the saved weights (default %(default)s, as published)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        shape = get_shape(args.size)
        shape.tile_tokens(args.tile)
        out = Path(args.output_dir or f"data/models/smolvlm-{shape.name.lower()}-random")
        _writable_dir(out)
        path = build_real_shapes_model(out, shape, tile=args.tile, dtype=getattr(torch, args.dtype), seed=args.seed)
    except (ValueError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    record = json.loads((path / SHAPES_FILE).read_text())
    print(json.dumps({"output_dir": str(path), **{k: record[k] for k in (
        "parameters", "image_tokens_per_tile", "tokenizer_size", "action_tokens", "build_seconds")}}))
    return path


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------------------------------------
# Arithmetic memory model for a GPU: what the recipe's phases need, from the shapes alone.
# ---------------------------------------------------------------------------------------------------------

GIB = 1024**3
# Published capacities and dense bf16 peaks (vendor data sheets; SXM parts), for the time estimates.
GPUS = {
    "A100-40GB": {"memory_gib": 40, "bf16_tflops": 312, "bandwidth_tb_s": 1.555},
    "H100-80GB": {"memory_gib": 80, "bf16_tflops": 989, "bandwidth_tb_s": 3.35},
}
CUDA_CONTEXT_GIB = 0.6  # CUDA context + cuBLAS workspaces: outside max_memory_allocated, inside nvidia-smi
LORA_RANK = 16
CHARS_PER_TOKEN = 3.5  # a real BPE (SmolLM2's) on this English-plus-JSON prompt; ours, trained on it, packs tighter


def image_tokens_in_prompt(shape: RealShape, tile: int = RECIPE_TILE) -> int:
    """Tokens one unsplit image takes in the prompt: its tile tokens plus <fake_token_around_image> twice
    and <global-img>, as Idefics3's processor writes them."""
    return shape.tile_tokens(tile) + 3


def recipe_text_tokens() -> dict[str, int]:
    """Estimated text tokens of the recipe's prompts and answers with a real tokenizer (chars / 3.5)."""
    from vlmrl.games import get_game

    game = get_game("ALE/Pong-v5")
    from vlmrl.prompts import acting_messages, format_answer, reflection_messages

    def chars(messages) -> int:
        return sum(len(c["text"]) for m in messages for c in m["content"] if c["type"] == "text") + 40  # roles

    acting = chars(acting_messages(game, PONG_ACTIONS, 1, "rgb"))
    reflecting = chars(reflection_messages(game, PONG_ACTIONS, action_taken="LEFTFIRE", reasoning="x" * 120,
                                           reward=0.0, return_to_go=-0.5, num_images_now=1, num_images_next=1))
    answer = len(format_answer("RIGHTFIRE", "x" * 100)) + 20  # a ~100-character reasoning, end of utterance
    return {k: int(round(v / CHARS_PER_TOKEN)) for k, v in
            (("acting_prompt", acting), ("reflection_prompt", reflecting), ("answer", answer))}


def _lora_parameters(shape: RealShape, rank: int = LORA_RANK) -> int:
    """LoRA A and B of train.py's targets (q k v o gate up down in the text model; q k v in the vision tower,
    whose attention projections share those names)."""
    h, i = shape.text_hidden, shape.text_intermediate
    kv = shape.text_kv_heads * (h // shape.text_heads)
    per_text_layer = rank * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)  # q, o; k, v; gate, up, down
    per_vision_layer = rank * 2 * shape.vision_hidden * 3
    return shape.text_layers * per_text_layer + shape.vision_layers * per_vision_layer


def _activation_bytes(shape: RealShape, tokens: int, images: int, checkpointing: bool,
                      tile: int = RECIPE_TILE) -> dict[str, float]:
    """Activations one sample keeps for the backward pass, bf16, attention by SDPA/flash (no s² scores).

    Per token and text layer (Llama): the fp32 RMSNorm inputs (2 x 4h), normed inputs (2 x 2h), q k v (2(h+2kv)),
    attention output and o_proj input (2 x 2h), gate, up, silu(gate) and their product (4 x 2I): about
    22h + 4kv + 8I bytes. Per patch and vision layer (SigLIP): about 18h + 4I. With checkpointing only each
    layer's input (2h) stays, plus one layer's worth while it is recomputed.
    """
    h, i = shape.text_hidden, shape.text_intermediate
    kv = shape.text_kv_heads * (h // shape.text_heads)
    text_layer = tokens * (22 * h + 4 * kv + 8 * i)
    patches = images * (tile // shape.patch_size) ** 2
    vision_layer = patches * (18 * shape.vision_hidden + 4 * shape.vision_intermediate)
    if checkpointing:
        text = tokens * 2 * h * shape.text_layers + text_layer
        vision = patches * 2 * shape.vision_hidden * shape.vision_layers + vision_layer
    else:
        text, vision = text_layer * shape.text_layers, vision_layer * shape.vision_layers
    logits = tokens * shape.vocab_size * (2 + 4 + 4)  # bf16 logits, their fp32 upcast in the loss, its gradient
    return {"text": text, "vision": vision, "logits": logits}


def memory_model(shape: RealShape, *, tile: int = RECIPE_TILE, train_batch: int = 4, act_batch: int = 8,
                 reflect_batch: int = 8, act_new_tokens: int = 64, reflect_new_tokens: int = 128) -> dict:
    """GPU memory (GiB) of the recipe's phases for ``shape`` in bf16, and whether each fits an A100 40 GB and
    an H100 80 GB. The recipe's settings are the defaults: acting at 8 envs with 64 new tokens, reflection
    batches of 8 with 128, fine-tuning at batch 4 on one 384-px tile plus the prompt and answer.

    Training is modelled two ways: as train.py does it with ``bf16: true`` (the model loaded in bf16, so
    weights, gradients and AdamW's two moments are all bf16: 8 bytes a parameter) and as mixed precision
    with fp32 master weights and moments (16 bytes a parameter; see the note in the result on why it
    matters). Activations follow ``_activation_bytes``; allocator fragmentation is not modelled, the CUDA
    context is added as a constant.
    """
    counts = parameter_count(shape)
    p = counts["total"]
    text = recipe_text_tokens()
    image = image_tokens_in_prompt(shape, tile)
    kv_per_token = 2 * shape.text_layers * shape.text_kv_heads * (shape.text_hidden // shape.text_heads) * 2
    patches = (tile // shape.patch_size) ** 2  # the tile's patches, not the tower's native count
    h, i = shape.text_hidden, shape.text_intermediate

    def inference(batch: int, prompt: int, new: int, images: int, logit_positions: int = 1) -> dict:
        seq = prompt + new
        parts = {
            "weights": 2 * p,
            "kv_cache": batch * seq * kv_per_token,
            # the largest transient: one vision layer on all patches, or one text layer's MLP on the prompt
            "activations": max(batch * images * patches * (6 * shape.vision_hidden + 2 * shape.vision_intermediate),
                                batch * prompt * (4 * h + 6 * i)) * 2,
            # bf16 logits, their fp32 copy and the log-softmax of it
            "logits": batch * logit_positions * shape.vocab_size * (2 + 4 + 4),
        }
        return _finish(parts, {"batch": batch, "sequence": seq})

    act_prompt = text["acting_prompt"] + image
    result = {
        "size": shape.name, "parameters": p, "parameters_by_part": counts, "tile": tile,
        "tokens": {"image_per_frame": image, **text, "train_sequence": act_prompt + text["answer"]},
        "act_generate": inference(act_batch, act_prompt, act_new_tokens, 1),
        # The multi-token path: every (observation, action) pair is one row (the frame encoded 6 times). With
        # logits at the scored positions only (agent.py after the logits_to_keep fix) and, for comparison,
        # over the whole sequence as before it.
        "act_constrained": inference(act_batch * 6, act_prompt + 4, 0, 1, logit_positions=4),
        "act_constrained_full_logits": inference(act_batch * 6, act_prompt + 4, 0, 1, logit_positions=act_prompt + 4),
        "reflect_generate": inference(reflect_batch, text["reflection_prompt"] + 2 * image, reflect_new_tokens, 2),
    }
    seq = act_prompt + text["answer"]
    lora = _lora_parameters(shape)
    for ckpt in (False, True):
        act = _activation_bytes(shape, seq, 1, ckpt, tile)
        activations = {k: v * train_batch for k, v in act.items()}
        tag = "ckpt" if ckpt else "no_ckpt"
        result[f"train_full_bf16_{tag}"] = _finish(
            {"weights": 2 * p, "gradients": 2 * p, "adamw_states": 4 * p, **activations},
            {"batch": train_batch, "sequence": seq})
        result[f"train_full_mixed_{tag}"] = _finish(
            {"weights": 4 * p + 2 * p, "gradients": 4 * p, "adamw_states": 8 * p, **activations},
            {"batch": train_batch, "sequence": seq, "note": "fp32 master weights + bf16 copy for the forward"})
        result[f"train_lora_{tag}"] = _finish(
            {"weights": 2 * p, "lora_weights_grads_adamw": 16 * lora, **activations},
            {"batch": train_batch, "sequence": seq, "lora_parameters": lora, "lora_rank": LORA_RANK})
    result["time_estimates"] = _time_estimates(counts, patches, seq, train_batch, act_batch, act_prompt,
                                               act_new_tokens)
    result["note"] = (
        "train_full_bf16 is what train.py does with the recipe's bf16: true (model loaded in bf16, AdamW moments "
        "in bf16). At lr 2e-5, an AdamW step changes a weight by ~2e-5, under half a bf16 ulp for any weight above "
        "~0.005 in magnitude, so most updates round away; mixed precision keeps fp32 masters at twice the memory."
    )
    return result


def _finish(parts: dict, extra: dict) -> dict:
    total = sum(parts.values()) / GIB + CUDA_CONTEXT_GIB
    out = {k: round(v / GIB, 2) for k, v in parts.items()}
    out["cuda_context"] = CUDA_CONTEXT_GIB
    out["total_gib"] = round(total, 2)
    out["fits"] = {gpu: total <= spec["memory_gib"] * 0.95 for gpu, spec in GPUS.items()}  # 5% for fragmentation
    return {**extra, **out}


def _time_estimates(counts: dict, patches: int, seq: int, train_batch: int, act_batch: int, prompt: int,
                    new: int) -> dict:
    """Rough seconds per step from FLOPs and bandwidth: 2 FLOPs a parameter a token forward (vision parameters
    over the tile's patches, the rest over the text tokens), x3 for training, x4 with checkpointing's
    recomputation, at 40% of the bf16 peak; generation bound by reading the bf16 weights once per new token
    at 60% of the bandwidth, after the prefill."""
    vision = counts["vision"]
    text = counts["total"] - vision
    forward = 2 * (vision * patches + text * seq)  # one sample
    prefill = 2 * (vision * patches + text * prompt)
    out = {}
    for gpu, spec in GPUS.items():
        flops = spec["bf16_tflops"] * 1e12 * 0.4
        decode = 2 * counts["total"] / (spec["bandwidth_tb_s"] * 1e12 * 0.6)
        out[gpu] = {
            "train_step_s": round(3 * forward * train_batch / flops, 3),
            "train_step_ckpt_s": round(4 * forward * train_batch / flops, 3),
            "act_generate_step_s": round(prefill * act_batch / flops + new * decode, 3),
        }
    return out
