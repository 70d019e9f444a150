"""Who plays: policies behind a registry, built by one factory.

Each backend is one module that registers a builder, ``build(args, game, actions, seed)``, under
its ``--policy`` name: ``model`` (a vision-language model, ``vlm.py``), ``random`` and ``oracle``.
A new backend (e.g. a vLLM-served model) is one new module imported below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlmrl.policies.base import Decision, Observation, Policy

_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_policy(name: str) -> Callable:
    """Decorator: registers ``build(args, game, actions, seed) -> policy`` under ``name``."""

    def decorate(build: Callable) -> Callable:
        _BUILDERS[name] = build
        return build

    return decorate


def policy_names() -> list[str]:
    return list(_BUILDERS)


def build_policy(args, game, actions: list[str], seed: int) -> Policy:
    """The policy ``args.policy`` names (a model's other settings are read from ``args``)."""
    try:
        build = _BUILDERS[args.policy]
    except KeyError:
        raise ValueError(f"--policy must be one of {', '.join(_BUILDERS)}, got {args.policy!r}") from None
    return build(args, game, actions, seed)


from vlmrl.policies import oracle, random, vlm  # noqa: E402,F401  (each registers itself)

__all__ = ["Decision", "Observation", "Policy", "build_policy", "policy_names", "register_policy"]
