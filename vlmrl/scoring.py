"""Scoring answer options by likelihood: how the agent picks an action and the probe picks an answer.

One batched forward pass scores every option. When the options start with distinct tokens the
first token decides and only the last position's logits are computed; otherwise each option is
scored in full over batch × options rows (a real tokenizer splits RIGHTFIRE into several tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_model(inputs, model) -> dict:
    """Processor outputs on the model's device; pixel values in the model's dtype (bf16 on a GPU)."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    return {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}


def option_token_ids(tokenizer, options: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    if any(not i for i in ids):
        raise ValueError(f"an answer option tokenizes to nothing: {list(options)}")
    return ids


def first_tokens_distinct(tokenizer, options: Sequence[str]) -> bool:
    """Whether one next-token distribution tells the options apart (their first tokens differ)."""
    firsts = [ids[0] for ids in option_token_ids(tokenizer, options)]
    return len(set(firsts)) == len(firsts)


@torch.no_grad()
def score_continuations(
    model,
    processor,
    prompt: str | Sequence[str],
    images: list[list],
    continuations: Sequence[str],
    *,
    full_sequence: bool | None = None,
) -> torch.Tensor:
    """Log-likelihood of each continuation after ``prompt`` for each observation's images: [batch, options].

    ``prompt`` is one prompt for every observation, or one per observation (first-token scoring
    only: a caption read slot by slot continues each observation's own answer so far).
    With distinct first tokens (and ``full_sequence`` not True) the first token decides; otherwise
    each continuation's tokens, as the tokenizer splits prompt + continuation, are summed.
    """
    tokenizer = processor.tokenizer
    if full_sequence is None:
        full_sequence = not first_tokens_distinct(tokenizer, continuations)
    per_image = not isinstance(prompt, str)
    if per_image and (full_sequence or len(prompt) != len(images)):
        raise ValueError("one prompt per observation needs as many prompts as observations and first-token scoring")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        if not full_sequence:
            firsts = [ids[0] for ids in option_token_ids(tokenizer, continuations)]
            texts = list(prompt) if per_image else [prompt] * len(images)
            inputs = to_model(processor(text=texts, images=images, return_tensors="pt", padding=True), model)
            if per_image:  # prompts of different lengths are left-padded: positions count from each one's start
                inputs["position_ids"] = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
            logits = model(**inputs, logits_to_keep=1).logits[:, -1].float()
            return torch.log_softmax(logits, dim=-1)[:, torch.tensor(firsts, device=logits.device)].cpu()
        texts = [prompt + c for _ in images for c in continuations]
        repeated = [im for im in images for _ in continuations]
        inputs = to_model(processor(text=texts, images=repeated, return_tensors="pt", padding=True), model)
    finally:
        tokenizer.padding_side = side
    # Each continuation's own tokens: those of prompt + continuation beyond the prompt's.
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    lengths = [len(tokenizer(prompt + c, add_special_tokens=False)["input_ids"]) - prompt_len for c in continuations]
    # Left-padded rows of different lengths: positions count from each row's first real token.
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    longest = max(lengths)
    logits = model(**inputs, logits_to_keep=longest + 1).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
    targets = inputs["input_ids"][:, -longest:]
    token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [rows, longest]
    scores = torch.stack([token_lp[row, -lengths[row % len(continuations)]:].sum()
                          for row in range(len(texts))])
    return scores.view(len(images), len(continuations)).cpu()
