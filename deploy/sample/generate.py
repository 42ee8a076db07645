#!/usr/bin/env python3
"""Writes the sample stream for `converge run`: orders.jsonl and orders.expected.json.

800 orders each walk created -> paid -> completed -> refunded, stopping at a random step; every
step has a higher version and a later timestamp. About a fifth of the events are duplicated and
the whole stream is shuffled, the way the seed's network delivered it. A few bad lines are
planted (malformed JSON, invalid UTF-8, missing key, unknown status, an id-only message).
orders.expected.json records, from the generator's own knowledge, each order's final state and
the planted bad lines, so a test can check `converge run` without trusting any rule.

Deterministic: run it again and the files come out the same.
"""

import json
import random
from pathlib import Path

STATUSES = ["created", "paid", "completed", "refunded"]
DISHES = ["mapo tofu", "kung pao chicken", "dumplings", "fried rice", "hot pot", "noodles"]

rng = random.Random(20261124)
events = []
final = {}
for n in range(1, 801):
    key = f"order-{n:04d}"
    timestamp = 1_763_971_200_000 + rng.randrange(86_400_000)
    dishes = sorted(rng.sample(DISHES, rng.randint(1, 3)))
    steps = rng.randint(1, len(STATUSES))
    for step, status in enumerate(STATUSES[:steps]):
        timestamp += rng.randint(1_000, 900_000)
        event = {
            "key": key,
            "status": status,
            "version": step + 1,
            "timestamp_ms": timestamp,
            "payload": {"table": n % 40 + 1, "dishes": dishes},
        }
        events.append(json.dumps(event, separators=(",", ":"), sort_keys=True).encode())
        if rng.random() < 0.2:
            events.append(events[-1])
        final[key] = event
rng.shuffle(events)

bad = [
    (b'{"key":"order-0001","status":"paid",', "undecodable", "malformed JSON"),
    (b'{"key":"order-0002","status":"p\xffid"}', "undecodable", "not valid UTF-8"),
    (b'{"status":"paid","version":2}', "undecodable", "missing key"),
    (b'{"key":"order-0003","status":"shipped","version":9}', "rejected", "unknown status"),
    (b'{"key":"","status":"paid"}', "undecodable", "empty key"),
    (b'{"key":"order-0004"}', "not_enriched", "id-only"),
]
for line, _, _ in bad:
    events.insert(rng.randrange(len(events) + 1), line)

here = Path(__file__).parent
(here / "orders.jsonl").write_bytes(b"\n".join(events) + b"\n")
bad_lines = []
for number, line in enumerate(events, start=1):
    for planted, kind, reason in bad:
        if line == planted:
            bad_lines.append({"line": number, "kind": kind, "reason_contains": reason})
expected = {
    "events": len(events),
    "final_states": [final[key] for key in sorted(final)],
    "bad_lines": bad_lines,
}
(here / "orders.expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
