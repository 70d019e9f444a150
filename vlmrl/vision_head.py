"""Deep supervision of the vision tower while the loop fine-tunes (``train.py --vision-head-weight``).

Measured (README, *What limits the loop*): the warmed-up base's own vision tower, fine-tuned directly on
the teacher's decisions with a linear answer on its pooled patch features, predicts them on held-out
states far better (0.90 overall, 0.83 with the ball coming toward you, 8 passes) than the whole VLM
does after the loop's fine-tuning (0.68 toward), and a linear probe of the tower after ten iterations of
the loop reads the decision no better than the base's (toward 0.63 against 0.59): the gradient that
reaches the tower through the language model barely reshapes it. So, while the loop fine-tunes, a linear
head on the tower's pooled features also answers each sample's corrected action (the same label the
language model is trained on, read off the action name in the answer), and its cross-entropy, times the
weight, is added to the loss. The head is dropped before the checkpoint is saved: the checkpoint is a
plain Idefics3 model that acts through its language model, as before.

Where it reads (``--vision-head-at``): ``tower``, the vision tower's last patch features; or ``connector``,
the image tokens the language model reads (the connector's output, after the pixel shuffle and projection),
so the decision is pushed into what the language model is given, not only into the tower.
"""

from __future__ import annotations

import torch

from vlmrl.games import Game
from vlmrl.perception import pool_patches

HEAD_NAME = "vlmrl_vision_action_head"
HEAD_PLACES = ("tower", "connector")


def action_token_classes(tokenizer, game: Game) -> dict[int, int]:
    """The first token of each of the game's action names -> the action's index; refuses names that share
    a first token (that token must say which action an answer names)."""
    table: dict[int, int] = {}
    for index, name in enumerate(game.actions):
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"--vision-head-weight: the action {name!r} encodes to no token")
        if ids[0] in table:
            raise ValueError(f"--vision-head-weight: the actions {game.actions[table[ids[0]]]!r} and {name!r} "
                             "begin with the same token, so the token does not say which an answer names")
        table[ids[0]] = index
    return table


def vision_tower(model) -> torch.nn.Module:
    """Idefics3's vision tower (``model.model.vision_model``); refuses other architectures."""
    tower = getattr(getattr(model, "model", None), "vision_model", None)
    if tower is None or not hasattr(getattr(tower, "config", None), "hidden_size"):
        raise ValueError("--vision-head-weight needs an Idefics3 model (a vision tower at model.model.vision_model)")
    return tower


def check_head_place(at: str) -> None:
    """Refuses a ``--vision-head-at`` that names no place the head can read."""
    if at not in HEAD_PLACES:
        raise ValueError(f"--vision-head-at must be one of {', '.join(HEAD_PLACES)}, got {at!r}")


def head_input(model, at: str) -> tuple[torch.nn.Module, int]:
    """The module whose output the head reads, and that output's width: the vision tower's patch features or
    the connector's image tokens (the language model's width)."""
    check_head_place(at)
    tower = vision_tower(model)
    if at == "tower":
        return tower, tower.config.hidden_size
    connector = getattr(model.model, "connector", None)
    text = getattr(getattr(model, "config", None), "text_config", None)
    if connector is None or not hasattr(text, "hidden_size"):
        raise ValueError("--vision-head-at connector needs an Idefics3 model (a connector at model.model.connector)")
    return connector, text.hidden_size


class VisionActionHead:
    """The head (a submodule of the model while it trains, so the optimizer and checkpoints hold it), the hook
    that keeps the tower's last patch features of each forward, and the auxiliary loss."""

    def __init__(self, model, tokenizer, game: Game, weight: float, at: str = "tower", seed: int = 0) -> None:
        if weight <= 0:
            raise ValueError(f"--vision-head-weight must be > 0 to attach a head, got {weight}")
        self.weight = weight
        self.classes = action_token_classes(tokenizer, game)
        source, width = head_input(model, at)
        # Its initial weights come from the run's seed, not from whatever state the global generator is in
        # before the Trainer seeds it (measured: without this, two runs of one command trained differently).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = torch.nn.Linear(2 * width, len(game.actions))
        param = next(source.parameters())
        model.add_module(HEAD_NAME, head.to(device=param.device, dtype=param.dtype))
        self._features: torch.Tensor | None = None
        self._hook = source.register_forward_hook(self._keep)
        self.batches = 0  # (this process's: a run resumed at its last step trains none)
        self.rows_with_action = 0

    def _keep(self, module, args, output) -> None:
        if isinstance(output, torch.Tensor):  # the connector returns its image tokens as they are
            self._features = output
        else:
            self._features = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Each row's action index: the first answer token (a label that is not -100) that begins an action
        name (the tiny recipe's answer is ``{"action": "NOOP"}``); -100 for a row whose answer names none (a
        rehearsal sample's perception question), which the head skips."""
        ids = torch.tensor(list(self.classes), device=labels.device)
        is_action = torch.isin(labels, ids)  # (token ids are >= 0: the masked prompt's -100 is never one)
        first = labels.gather(1, is_action.int().argmax(1, keepdim=True)).squeeze(1)
        named = is_action.any(1)
        self.batches += 1
        self.rows_with_action += int(named.sum())
        rows = [self.classes[int(t)] if n else -100 for t, n in zip(first.tolist(), named.tolist(), strict=True)]
        return torch.tensor(rows, device=labels.device)

    def loss(self, model, targets: torch.Tensor) -> torch.Tensor:
        """The weighted cross-entropy of the head's answer on the features the last forward kept."""
        features, self._features = self._features, None
        if features is None:
            raise ValueError("--vision-head-weight: the forward did not run the vision tower")
        if features.shape[0] != targets.shape[0]:
            raise ValueError(f"--vision-head-weight needs one image per sample; the batch of {targets.shape[0]} "
                             f"had {features.shape[0]}")
        head = getattr(unwrap(model), HEAD_NAME)
        logits = head(pool_patches(features))
        if not (targets >= 0).any():  # a batch of rehearsal questions alone: nothing for the head to learn
            return logits.sum() * 0.0
        return self.weight * torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100)

    def check_used(self) -> None:
        """Refuses a training run in which no answer named an action: the head learned nothing."""
        if self.batches and self.rows_with_action == 0:
            raise ValueError("--vision-head-weight: no training answer named an action (the head learns the "
                             "corrected action named in each answer)")

    def detach(self, model) -> None:
        """Removes the hook and the head: what is saved afterwards is the plain model."""
        self._hook.remove()
        model = unwrap(model)
        if hasattr(model, HEAD_NAME):
            delattr(model, HEAD_NAME)


def unwrap(model):
    """The model under accelerate's or DDP's wrapper."""
    return getattr(model, "module", model)


def with_vision_head(trainer_class: type) -> type:
    """``trainer_class`` (TRL's SFTTrainer) whose loss adds the head's, when ``vision_head`` is given."""

    class VisionHeadTrainer(trainer_class):
        def __init__(self, *args, vision_head: VisionActionHead | None = None, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.vision_head = vision_head

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.vision_head is None or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            targets = self.vision_head.targets(inputs["labels"])
            # (asking TRL for the outputs too would cost a second forward: the hook keeps what the head needs)
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            extra = self.vision_head.loss(model, targets)
            metrics = getattr(self, "_metrics", None)
            if isinstance(metrics, dict) and "train" in metrics:
                metrics["train"]["vision_head_loss"].append(float(extra.detach()))
            if return_outputs:
                return result[0] + extra, result[1]
            return result + extra

    return VisionHeadTrainer
