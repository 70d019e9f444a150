"""Loading a vision-language model and its processor, local path or Hub id, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vlmrl.observation import ObservationConfig


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model_reference(model: str) -> None:
    """A local-looking path that doesn't exist is a user error, not a Hub lookup."""
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1 or os.sep + os.sep in model
    if looks_local and not Path(model).expanduser().exists():
        hint = " (run `make tiny-model` to build the tiny model)" if "tiny" in model else ""
        raise FileNotFoundError(f"model path {model!r} does not exist{hint}")


def load_processor(model: str, observation: ObservationConfig | None = None, **kwargs):
    """The model's processor; one image tile of the observation's size, no splitting."""
    from transformers import AutoProcessor

    check_model_reference(model)
    if observation is not None:
        # One tile per frame (FACTS: SmolVLM splits a frame into ~17 tiles at its defaults).
        kwargs.setdefault("do_image_splitting", False)
        kwargs.setdefault("size", {"longest_edge": observation.image_size})
        kwargs.setdefault("max_image_size", {"longest_edge": observation.image_size})
    try:
        processor = AutoProcessor.from_pretrained(model, **kwargs)
    except OSError as err:
        raise FileNotFoundError(f"could not load a processor from {model!r}: {err}") from None
    if observation is not None and hasattr(processor, "image_seq_len"):
        # A tile smaller than the vision tower's own (the recipe's 384 px on SmolVLM-256M/500M's 512-px tower)
        # makes fewer image features than the saved image_seq_len (64) says, and Idefics3 refuses the batch.
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model)
            patch, scale = config.vision_config.patch_size, config.scale_factor
        except (OSError, ValueError, AttributeError):
            return processor
        processor.image_seq_len = (observation.image_size // patch) ** 2 // scale**2
    return processor


def load_vlm(model: str, device: torch.device | None = None, dtype: torch.dtype | None = None, **kwargs):
    """An image-text-to-text model; a text-only or unknown model gets a message saying so."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    check_model_reference(model)
    device = device or default_device()
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"could not load a model config from {model!r}: {err}") from None
    if getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"{model!r} is a {config.model_type} model without a vision tower: vlmrl needs a vision-language "
            "model (e.g. HuggingFaceTB/SmolVLM-Instruct or the tiny model from `make tiny-model`)"
        )
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        vlm = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype, **kwargs)
    except ValueError as err:
        raise ValueError(f"{model!r} is not an image-text-to-text model: {err}") from None
    return vlm.to(device).eval()


def vision_image_size(model: str | None, default: int = 384) -> int:
    """The image side the model's vision tower was built for (its config only; no weights loaded)."""
    from transformers import AutoConfig

    if not model or model in ("random", "oracle"):
        return default
    try:
        return int(AutoConfig.from_pretrained(model).vision_config.image_size)
    except (OSError, ValueError, AttributeError):
        return default
