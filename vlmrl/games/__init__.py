"""The games vlmrl knows, one module each, behind a registry.

A game id is resolved once, at the edge of each phase (``get_game("ALE/Pong-v5")``), and the
``Game`` object is passed on. A new game is one new module: a ``Game`` subclass decorated with
``@register_game``, imported below (or by whoever registers it, e.g. a test).
"""

from __future__ import annotations

from vlmrl.env import game_name
from vlmrl.games.base import Game, OracleDecision, Question

_REGISTRY: dict[str, type[Game]] = {}


def register_game(cls: type[Game]) -> type[Game]:
    """Class decorator: ``cls`` now answers for every id whose game name is ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set name (ALE's name of the game, e.g. 'Pong')")
    _REGISTRY[cls.name.lower()] = cls
    return cls


def unregister_game(name: str) -> None:
    """Forget a registered game (tests register fake ones)."""
    _REGISTRY.pop(name.lower(), None)


def get_game(game: str | Game) -> Game:
    """The ``Game`` of an id ('ALE/Pong-v5', 'PongNoFrameskip-v4'); a game without a module is a plain ``Game``."""
    if isinstance(game, Game):
        return game
    if not isinstance(game, str) or not game.strip():
        raise ValueError(f"a game id is an ALE id such as 'ALE/Pong-v5', got {game!r}")
    cls = _REGISTRY.get(game_name(game).lower(), Game)
    return cls(game)


def registered_games() -> list[Game]:
    """One instance of each registered game, at its default id."""
    return [cls() for cls in _REGISTRY.values()]


def games_with_oracle() -> list[Game]:
    return [g for g in registered_games() if g.has_oracle]


# The games that ship with vlmrl register themselves on import.
from vlmrl.games import breakout, pong  # noqa: E402,F401

__all__ = ["Game", "OracleDecision", "Question", "get_game", "register_game", "registered_games", "unregister_game"]
