"""The rule `{{name}}`: for each key, the newest state wins.

converge calls `decide` with what is stored for a key (if anything) and one incoming event; the
answer must depend on nothing else. It converges because "newer" is a total order on states:
whatever order events arrive in, every key ends on the newest one. Change `STATUSES` and
`newness` to your domain, and keep that property: `converge check` tests it.

componentize-py generates the `wit_world` module from wit/rule.wit when build.sh runs, and
exports this module's `WitWorld` as the `converge:rule` world.
"""

from typing import List, Optional, Tuple

import wit_world
from wit_world import Decision, Entity, RuleInfo
from wit_world import Decision_Ignore, Decision_Insert, Decision_Reject, Decision_Update

NAME = "{{name}}"
# build.sh replaces this value with $CONVERGE_RULE_VERSION when that is set.
VERSION = "0.1.0"

# The statuses this rule stores, oldest first: a later status is newer at equal versions and times.
STATUSES = ("created", "updated", "deleted")


def rank(status: str) -> int:
    """The position of `status` in STATUSES; -1, older than any, for one this rule does not know."""
    return STATUSES.index(status) if status in STATUSES else -1


def newness(entity: Entity) -> Tuple[int, int, int, str]:
    """What makes a state newer: its version, then its time, then its status, then its payload,
    so that two different states never tie (a tie would let delivery order decide). Python's
    ints are unbounded, so u64 values compare exactly; str order is code point order, the order
    of the UTF-8 bytes."""
    return (entity.version, entity.timestamp_ms, rank(entity.status), entity.payload)


class WitWorld(wit_world.WitWorld):
    """The rule, as the exports of the `converge:rule` world."""

    def info(self) -> RuleInfo:
        return RuleInfo(name=NAME, version=VERSION, statuses=list(STATUSES))

    def decide(self, current: Optional[Entity], incoming: Entity) -> Decision:
        """Decides whether `incoming` should replace `current` (None: nothing stored)."""
        if not incoming.key:
            return Decision_Reject("empty key")
        if rank(incoming.status) < 0:
            return Decision_Reject(f"unknown status {incoming.status!r}")
        if current is None:
            return Decision_Insert(incoming)
        if current.key != incoming.key:
            return Decision_Reject("stored key does not match the event's key")
        if newness(incoming) > newness(current):
            return Decision_Update(incoming)
        return Decision_Ignore("duplicate" if incoming == current else "stale")

    def decide_batch(self, items: List[Tuple[Optional[Entity], Entity]]) -> List[Decision]:
        """`decide` for each (current, incoming) pair, in order."""
        return [self.decide(current, incoming) for current, incoming in items]
