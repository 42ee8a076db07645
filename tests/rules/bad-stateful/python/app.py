"""bad-stateful (../src/lib.rs) in Python: the shipped order on a fresh instance, but it counts
its calls in a module global, and after 500 of them takes a "fast path" that skips the payload
tie-break. The same (current, incoming) then gets another answer than it got before: `converge
check` must call it non-deterministic, not blame delivery order.
"""

from typing import List, Optional, Tuple

import wit_world
from wit_world import (
    Decision,
    Decision_Ignore,
    Decision_Insert,
    Decision_Reject,
    Decision_Update,
    Entity,
    RuleInfo,
)

STATUSES = ("created", "paid", "completed", "refunded")
RANK = {status: rank for rank, status in enumerate(STATUSES)}

calls = 0


def decide(current: Optional[Entity], incoming: Entity) -> Decision:
    global calls
    calls += 1
    incoming_rank = RANK.get(incoming.status)
    if incoming_rank is None:
        return Decision_Reject(f"unknown status {incoming.status!r}")
    if not incoming.key:
        return Decision_Reject("empty key")
    if current is None:
        return Decision_Insert(incoming)
    current_rank = RANK.get(current.status, 0)
    new = (incoming_rank, incoming.version, incoming.timestamp_ms)
    old = (current_rank, current.version, current.timestamp_ms)
    if calls <= 500:
        new += (incoming.payload,)
        old += (current.payload,)
    if new > old:
        return Decision_Update(incoming)
    if new == old:
        return Decision_Ignore("duplicate")
    return Decision_Ignore("stale")


class WitWorld(wit_world.WitWorld):
    def info(self) -> RuleInfo:
        return RuleInfo(name="bad-stateful", version="0.1.0", statuses=list(STATUSES))

    def decide(self, current: Optional[Entity], incoming: Entity) -> Decision:
        return decide(current, incoming)

    def decide_batch(
        self, items: List[Tuple[Optional[Entity], Entity]]
    ) -> List[Decision]:
        return [decide(current, incoming) for current, incoming in items]
