"""The game's RAM-reading oracle as a player: the reference line above every learning curve."""

from __future__ import annotations

from vlmrl.games import Game
from vlmrl.games.base import decide_batch
from vlmrl.policies import register_policy
from vlmrl.policies.base import Decision, Observation
from vlmrl.prompts import format_answer


class OraclePolicy:
    """Plays the oracle's action; raises for a game without an oracle."""

    name = "oracle"
    history = 1
    model_name = "oracle"

    def __init__(self, game: Game) -> None:
        self.oracle = game.oracle()

    def act(self, observations: list[Observation]) -> list[Decision]:
        decisions = decide_batch(self.oracle, [o.ram for o in observations], [o.prev_ram for o in observations])
        return [Decision(d.action, d.reasoning, format_answer(d.action, d.reasoning)) for d in decisions]


@register_policy("oracle")
def _build(args, game: Game, actions: list[str], seed: int) -> OraclePolicy:
    return OraclePolicy(game)
