"""A vision-language model playing: the acting prompt, batched observation encoding, constrained
decoding (the legal action names scored by likelihood) or free generation (parsed)."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch

from vlmrl.games import Game
from vlmrl.observation import ObservationConfig, encode_batch, encode_observation
from vlmrl.policies import register_policy
from vlmrl.policies.base import Decision, Observation
from vlmrl.prompts import ANSWER_PREFIX, acting_messages, parse_answer
from vlmrl.scoring import score_continuations, to_model


class PromptEncoder:
    """Turns observations into model inputs; the prompt is the same every step, so it is tokenized once.

    The fast path builds ``pixel_values`` for the whole batch at once (``encode_batch``) with the
    image processor's own rescale/normalise constants; it is used only when the processor would
    neither resize nor split the already-resized images (checked against the processor itself in
    the tests).
    """

    def __init__(self, processor, game: Game, actions: list[str], observation: ObservationConfig) -> None:
        self.processor = processor
        self.game = game
        self.observation = observation
        n_images = observation.images_per_observation
        self.prompt = processor.apply_chat_template(
            acting_messages(game, actions, n_images, observation.encoding), add_generation_prompt=True
        )
        ip = processor.image_processor
        size = getattr(ip, "size", None) or {}
        self.fast = (
            not getattr(ip, "do_image_splitting", False)
            and size.get("longest_edge") == observation.image_size
            and getattr(ip, "do_rescale", True)
        )
        self._ids_cache: dict[str, torch.Tensor] = {}
        self._lut: np.ndarray | None = None
        self._frame_cache: dict = {}  # this step's frames, met again as the next step's previous ones

    def images(self, observations: list[Observation]) -> list[list]:
        return [encode_observation(o.frames, self.observation, self.game) for o in observations]

    def encode(self, observations: list[Observation], suffix: str = "") -> dict[str, torch.Tensor]:
        text = self.prompt + suffix
        if not self.fast:
            images = self.images(observations)
            return self.processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True)
        if text not in self._ids_cache:
            probe = self.processor(text=[text], images=[self.images(observations[:1])[0]], return_tensors="pt")
            self._ids_cache[text] = probe["input_ids"][0]
        ids = self._ids_cache[text]
        pixel_values = self.pixel_values(observations)
        batch = len(observations)
        return {
            "input_ids": ids.unsqueeze(0).expand(batch, -1).contiguous(),
            "attention_mask": torch.ones(batch, ids.shape[0], dtype=torch.long),
            "pixel_values": pixel_values,
            "pixel_attention_mask": torch.ones(pixel_values.shape[:2] + pixel_values.shape[3:], dtype=torch.bool),
        }

    def pixel_values(self, observations: list[Observation]) -> torch.Tensor:
        """(batch, images, 3, size, size) float32, as the image processor would make them (fast path):
        each channel's 256 possible values are rescaled and normalised once, then looked up."""
        if self._lut is None:
            ip = self.processor.image_processor
            lut = np.repeat(np.arange(256, dtype=np.float32)[None], 3, axis=0) * ip.rescale_factor
            if ip.do_normalize:
                mean, std = (np.asarray(v, np.float32)[:, None] for v in (ip.image_mean, ip.image_std))
                lut = (lut - mean) / std
            lut = lut.astype(np.float32)
            # One table when the three channels share their normalisation: then one lookup per call.
            self._lut = lut[0] if (lut == lut[0]).all() else lut
        pixels = encode_batch([o.frames for o in observations], self.observation, self.game, self._frame_cache,
                              channels_first=True)
        if self._lut.ndim == 1:
            return torch.from_numpy(np.take(self._lut, pixels))
        out = np.empty(pixels.shape, np.float32)
        for c in range(3):
            np.take(self._lut[c], pixels[:, :, c], out=out[:, :, c])
        return torch.from_numpy(out)


class VLMPolicy:
    """A vision-language model playing: constrained (score the legal actions) or free generation.

    Constrained decoding with one-token action names is one forward pass per step for the whole
    batch. Its prompt is the same every step up to the first image token (the system prompt: about
    two thirds of the tokens), so with ``prefix_cache`` (the default) those tokens are run through
    the model once, their keys and values kept, and each step feeds only the tokens from the first
    image on (image features merged as usual) on a per-call copy of that cache expanded to the
    batch. The first cached call is checked against the plain forward; a model whose forward does
    not take a cache (or gives other scores with one) falls back to the plain forward, as does the
    multi-token path and any batch whose rows differ before the image. The cache is built from the
    weights at first use: call ``reset_prefix_cache()`` after changing the model's weights.
    """

    name = "model"

    def __init__(
        self,
        model,
        processor,
        game: Game,
        actions: list[str],
        observation: ObservationConfig,
        *,
        decode: str = "constrained",
        temperature: float = 0.0,
        max_new_tokens: int = 48,
        min_new_tokens: int = 0,
        fallback_action: str | None = None,
        seed: int = 0,
        prefix_cache: bool = True,
        model_name: str | None = None,
        action_bias: dict[str, float] | None = None,
    ) -> None:
        if decode not in ("constrained", "generate"):
            raise ValueError(f"decode must be 'constrained' or 'generate', got {decode!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.model = model
        self.processor = processor
        self.actions = actions
        self.decode = decode
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens  # generate mode: no end of answer before this many tokens
        self.fallback_action = fallback_action or actions[0]
        if self.fallback_action not in actions:
            raise ValueError(f"fallback action {self.fallback_action!r} is not one of {actions}")
        self.encoder = PromptEncoder(processor, game, actions, observation)
        self.observation = observation
        self.history = observation.frames
        self.model_name = model_name or getattr(model, "name_or_path", "") or "model"
        self.generator = torch.Generator().manual_seed(seed)
        self.device = next(model.parameters()).device
        tokenizer = processor.tokenizer
        self._action_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in actions]
        first = [ids[0] for ids in self._action_ids]
        # One token per action and distinct: a single forward scores them all at the next position.
        self._single_token = all(len(ids) == 1 for ids in self._action_ids) and len(set(first)) == len(first)
        self.prefix_cache = prefix_cache
        # Constrained mode: a bias per action class added to the scores before the pick (a decision threshold).
        self.action_bias = None
        if action_bias:
            unknown = sorted(set(action_bias) - set(game.action_classes.values()))
            if unknown:
                known = ", ".join(sorted(set(game.action_classes.values())))
                raise ValueError(f"--action-bias names {', '.join(unknown)}: " + (
                    f"{game.id}'s action classes are {known}" if known else f"{game.id} has no action classes"))
            self.action_bias = torch.tensor([action_bias.get(game.action_class(a), 0.0) for a in actions])
        self.reset_prefix_cache()

    def reset_prefix_cache(self) -> None:
        """Forget the cached prompt prefix (it is rebuilt, and re-checked, at the next step)."""
        self._prefixes: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._prefix_verified = False

    def _to_device(self, inputs: dict) -> dict:
        return to_model(inputs, self.model)

    @torch.inference_mode()
    def action_logprobs(self, observations: list[Observation]) -> torch.Tensor:
        """Log-likelihood of each legal action after the answer prefix, shape (batch, actions)."""
        if self._single_token:
            inputs = self._to_device(self.encoder.encode(observations, " " + ANSWER_PREFIX))
            logits = self.next_token_logits(inputs)
            ids = torch.tensor([i[0] for i in self._action_ids], device=logits.device)
            return torch.log_softmax(logits, dim=-1)[:, ids].cpu()
        return self._sequence_logprobs(observations)

    @torch.inference_mode()
    def next_token_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float logits of the token after encoded ``inputs``, shape (batch, vocab): the forward of
        constrained decoding, on the cached prompt prefix when it applies."""
        if self.prefix_cache:
            logits = self._prefix_cached_logits(inputs)
            if logits is not None:
                return logits
        return self.model(**inputs, logits_to_keep=1).logits[:, -1, :].float()

    def _cache_kwarg(self) -> str | None:
        if not hasattr(self, "_cache_kwarg_name"):  # transformers 5 names it ``cache``, earlier ``past_key_values``
            params = inspect.signature(self.model.forward).parameters
            self._cache_kwarg_name = next((n for n in ("cache", "past_key_values") if n in params), None)
        return self._cache_kwarg_name

    def _prefix_cached_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The cached-prefix forward, or None where it does not apply (then the caller runs the plain one)."""
        image_token = getattr(self.model.config, "image_token_id", None)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        cache_kwarg = self._cache_kwarg()
        if image_token is None or cache_kwarg is None or (mask is not None and not bool(mask.all())):
            return None
        where = (ids[0] == image_token).nonzero()
        n = int(where[0]) if len(where) else 0
        if n == 0 or not bool((ids[:, :n] == ids[0, :n]).all()):
            return None  # no text before the image, or rows that differ before it
        key = tuple(ids[0, :n].tolist())
        if key not in self._prefixes:
            layers = self._build_prefix(ids[:1, :n], cache_kwarg)
            if layers is None:
                self.prefix_cache = False
                return None
            self._prefixes[key] = layers
        try:
            out = self._forward_on_prefix(inputs, n, self._prefixes[key], cache_kwarg)
        except (TypeError, ValueError, RuntimeError) as err:
            if self._prefix_verified:
                raise
            warnings.warn(f"no prompt-prefix cache for this model ({err!r})", stacklevel=3)
            self.prefix_cache = False
            return None
        logits = out.logits[:, -1, :].float()
        if not self._prefix_verified:  # once per policy: the cached forward must score as the plain one does
            plain = self.model(**inputs, logits_to_keep=1).logits[:, -1, :].float()
            tolerance = 1e-3 if next(self.model.parameters()).dtype == torch.float32 else 5e-2
            gap = (torch.log_softmax(logits, -1) - torch.log_softmax(plain, -1)).abs().max().item()
            if not gap <= tolerance:
                warnings.warn(f"the prompt-prefix cache changes this model's scores (by {gap:.3g}): turned off",
                              stacklevel=3)
                self.prefix_cache = False
                return plain
            self._prefix_verified = True
        return logits

    def _forward_on_prefix(self, inputs: dict, n: int, layers: list, cache_kwarg: str):
        """The forward of the tokens from ``n`` on, after the cached prefix ``layers`` (batch 1, expanded)."""
        from transformers import DynamicCache

        ids = inputs["input_ids"]
        batch = ids.shape[0]
        cache = DynamicCache(  # a fresh copy per call: the forward appends this step's tokens to it
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in layers]
        )
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        return self.model(
            input_ids=ids[:, n:],
            attention_mask=torch.ones(ids.shape, dtype=torch.long, device=ids.device),  # prefix + new tokens
            **rest,
            **{cache_kwarg: cache},
            use_cache=True,
            logits_to_keep=1,
        )

    def _build_prefix(self, prefix_ids: torch.Tensor, cache_kwarg: str) -> list | None:
        """Runs the prompt's text prefix once; its per-layer (keys, values) at batch 1, or None."""
        from transformers import DynamicCache

        try:
            out = self.model(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids),
                             use_cache=True, logits_to_keep=1)
        except (TypeError, ValueError) as err:
            warnings.warn(f"no prompt-prefix cache for this model ({err})", stacklevel=4)
            return None
        cache = getattr(out, cache_kwarg, None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if not isinstance(cache, DynamicCache):
            return None
        layers = []
        for layer in cache.layers:
            if getattr(layer, "is_sliding", False) or type(layer).__name__ != "DynamicLayer":
                return None  # sliding windows and other layer kinds: not handled here
            layers.append((layer.keys, layer.values))
        return layers

    def _sequence_logprobs(self, observations: list[Observation]) -> torch.Tensor:
        # Multi-token names (a real tokenizer splits RIGHTFIRE): each full name plus the closing quote.
        return score_continuations(
            self.model, self.processor, self.encoder.prompt + " " + ANSWER_PREFIX, self.encoder.images(observations),
            [action + '"' for action in self.actions], full_sequence=True,
        )

    def _pick(self, logprobs: torch.Tensor, observations: list[Observation] | None = None) -> list[int]:
        if self.temperature == 0:
            return logprobs.argmax(dim=-1).tolist()
        probs = torch.softmax(logprobs.double() / self.temperature, dim=-1)
        if observations and all(o.rng is not None for o in observations):
            # Each episode's own stream: its draws do not depend on which episodes share the batch.
            return [int(o.rng.choice(len(p), p=(p / p.sum()).numpy())) for o, p in zip(observations, probs,
                                                                                       strict=True)]
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).tolist()

    def act(self, observations: list[Observation]) -> list[Decision]:
        if not observations:
            return []
        if self.decode == "constrained":
            scores = self.action_logprobs(observations)
            if self.action_bias is not None:
                scores = scores + self.action_bias
            picks = self._pick(scores, observations)
            return [
                Decision(self.actions[i], "", ANSWER_PREFIX + self.actions[i] + '"', True) for i in picks
            ]
        return self._generate(observations)

    @torch.inference_mode()
    def _generate(self, observations: list[Observation]) -> list[Decision]:
        if self.temperature > 0 and all(o.rng is not None for o in observations):
            # Sampled answers drawn from each episode's own stream: one row at a time, torch's generator
            # seeded from the episode's stream, so an episode's answers do not depend on its batch-mates
            # and a resumed collection samples what the uninterrupted one did.
            decisions = []
            devices = [self.device] if self.device.type == "cuda" else []
            for observation in observations:
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(int(observation.rng.integers(2**62)))
                    decisions += self._generate_batch([observation])
            return decisions
        return self._generate_batch(observations)

    def _generate_batch(self, observations: list[Observation]) -> list[Decision]:
        inputs = self._to_device(self.encoder.encode(observations))
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
        tokenizer = self.processor.tokenizer
        output = self.model.generate(**inputs, **kwargs, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        decisions = []
        for text in texts:
            parsed = parse_answer(text, self.actions)
            action = parsed.action if parsed.valid else self.fallback_action
            decisions.append(Decision(action, parsed.reasoning, text, parsed.valid))
        return decisions


@register_policy("model")
def _build(args, game: Game, actions: list[str], seed: int) -> VLMPolicy:
    """The model ``args.model`` names, seeing what its record (or ``args``) says."""
    from vlmrl.models import load_processor, load_vlm

    model = load_vlm(args.model)
    observation = args.observation_config(args.model, model.config.vision_config.image_size)
    processor = load_processor(args.model, observation)
    return VLMPolicy(
        model, processor, game, actions, observation,
        decode=args.decode, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens, seed=seed, model_name=args.model, action_bias=args.action_biases(),
    )
