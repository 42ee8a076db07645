"""The order-status rule in Python: the same decisions as the Rust rule (plugin/src/core.rs).

An order moves through created < paid < completed < refunded. An incoming event replaces the
stored state only if it is newer: higher status rank, then (same status) higher version, then
later source timestamp, and, when all of these agree but the payloads differ, the payload that
sorts higher byte-wise. The last step makes the order total, so the stored state never depends
on which of two conflicting observations arrived last.

componentize-py generates `wit_world` from wit/rule.wit at build time (build.sh) and exports
this module's `WitWorld` as the `converge:rule` world.
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

NAME = "order-status"
VERSION = "0.1.0"

# The order lifecycle, oldest first. An order never moves to an earlier status.
STATUSES = ("created", "paid", "completed", "refunded")
RANK = {status: rank for rank, status in enumerate(STATUSES)}


def decide(current: Optional[Entity], incoming: Entity) -> Decision:
    """Decides whether `incoming` should replace `current`."""
    if not incoming.key:
        return Decision_Reject("empty key")
    incoming_rank = RANK.get(incoming.status)
    if incoming_rank is None:
        return Decision_Reject(f"unknown status {incoming.status!r}")
    if current is None:
        return Decision_Insert(incoming)
    if current.key != incoming.key:
        return Decision_Reject(
            f"stored key {current.key!r} does not match event key {incoming.key!r}"
        )
    # A stored status this rule does not know was written by another rule: any known status
    # is considered newer, so the key moves back under this rule's lifecycle.
    current_rank = RANK.get(current.status)
    if current_rank is None:
        return Decision_Update(incoming)
    # Python ints are unbounded, so u64 versions and timestamps compare exactly; str order is
    # code point order, which is UTF-8 byte order, the Rust rule's payload tie-break.
    new = (incoming_rank, incoming.version, incoming.timestamp_ms, incoming.payload)
    old = (current_rank, current.version, current.timestamp_ms, current.payload)
    if new > old:
        return Decision_Update(incoming)
    if new == old:
        return Decision_Ignore("duplicate")
    return Decision_Ignore("stale")


class WitWorld(wit_world.WitWorld):
    """The exports of the `converge:rule` world."""

    def info(self) -> RuleInfo:
        return RuleInfo(name=NAME, version=VERSION, statuses=list(STATUSES))

    def decide(self, current: Optional[Entity], incoming: Entity) -> Decision:
        return decide(current, incoming)

    def decide_batch(
        self, items: List[Tuple[Optional[Entity], Entity]]
    ) -> List[Decision]:
        return [decide(current, incoming) for current, incoming in items]
