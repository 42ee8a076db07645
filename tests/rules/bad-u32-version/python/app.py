"""bad-u32-version (../src/lib.rs) in Python: the shipped order (status, version, timestamp,
payload), but versions are compared as u32, as the old schema stored them. Versions equal in
their low 32 bits (0 and 2^32) tie, and the first one stored stays.
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


def decide(current: Optional[Entity], incoming: Entity) -> Decision:
    incoming_rank = RANK.get(incoming.status)
    if incoming_rank is None:
        return Decision_Reject(f"unknown status {incoming.status!r}")
    if not incoming.key:
        return Decision_Reject("empty key")
    if current is None:
        return Decision_Insert(incoming)
    current_rank = RANK.get(current.status, 0)
    new = (incoming_rank, incoming.version & 0xFFFF_FFFF, incoming.timestamp_ms, incoming.payload)
    old = (current_rank, current.version & 0xFFFF_FFFF, current.timestamp_ms, current.payload)
    if new > old:
        return Decision_Update(incoming)
    if new == old:
        return Decision_Ignore("duplicate")
    return Decision_Ignore("stale")


class WitWorld(wit_world.WitWorld):
    def info(self) -> RuleInfo:
        return RuleInfo(name="bad-u32-version", version="0.1.0", statuses=list(STATUSES))

    def decide(self, current: Optional[Entity], incoming: Entity) -> Decision:
        return decide(current, incoming)

    def decide_batch(
        self, items: List[Tuple[Optional[Entity], Entity]]
    ) -> List[Decision]:
        return [decide(current, incoming) for current, incoming in items]
