// The order-status rule in JavaScript: the same decisions as the Rust rule (plugin/src/core.rs).
//
// An order moves through created < paid < completed < refunded. An incoming event replaces the
// stored state only if it is newer: higher status rank, then (same status) higher version, then
// later source timestamp, and, when all of these agree but the payloads differ, the payload that
// sorts higher byte-wise. The last step makes the order total, so the stored state never depends
// on which of two conflicting observations arrived last.
//
// componentize-js exports this module's `info`, `decide` and `decideBatch` as the
// `converge:rule` world: an `option` is the value or `undefined`, a `variant` is `{ tag, val }`,
// and `u64` fields (`version`, `timestampMs`) are BigInts, exact over the whole u64 range.

const NAME = "order-status";
const VERSION = "0.1.0";

/** The order lifecycle, oldest first. An order never moves to an earlier status. */
const STATUSES = ["created", "paid", "completed", "refunded"];
const RANK = new Map(STATUSES.map((status, rank) => [status, rank]));

export function info() {
  return { name: NAME, version: VERSION, statuses: [...STATUSES] };
}

/** Decides whether `incoming` should replace `current` (`undefined`: nothing stored). */
export function decide(current, incoming) {
  if (incoming.key === "") {
    return reject("empty key");
  }
  const incomingRank = RANK.get(incoming.status);
  if (incomingRank === undefined) {
    return reject(`unknown status ${JSON.stringify(incoming.status)}`);
  }
  if (current === undefined) {
    return { tag: "insert", val: incoming };
  }
  if (current.key !== incoming.key) {
    return reject(
      `stored key ${JSON.stringify(current.key)} does not match event key ${JSON.stringify(incoming.key)}`,
    );
  }
  // A stored status this rule does not know was written by another rule: any known status is
  // considered newer, so the key moves back under this rule's lifecycle.
  const currentRank = RANK.get(current.status);
  if (currentRank === undefined) {
    return { tag: "update", val: incoming };
  }
  const newness =
    compare(incomingRank, currentRank) ||
    compare(incoming.version, current.version) ||
    compare(incoming.timestampMs, current.timestampMs) ||
    compareUtf8(incoming.payload, current.payload);
  if (newness > 0) {
    return { tag: "update", val: incoming };
  }
  return { tag: "ignore", val: newness === 0 ? "duplicate" : "stale" };
}

/** `decide` for each (current, incoming) pair, in order. */
export function decideBatch(items) {
  return items.map(([current, incoming]) => decide(current, incoming));
}

function reject(reason) {
  return { tag: "reject", val: reason };
}

/** -1, 0 or 1 for two numbers or two BigInts (never mixed: `u64`s are BigInts). */
function compare(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Compares two strings as their UTF-8 bytes compare (the Rust rule's order), which is code point
 * order. JavaScript's `<` compares UTF-16 code units, which puts a character above U+FFFF (a
 * surrogate pair, 0xD800-0xDFFF) before one in U+E000-U+FFFF; the first differing unit is
 * remapped so that surrogates sort above every other BMP unit.
 */
function compareUtf8(a, b) {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      return compare(codePointOrder(x), codePointOrder(y));
    }
  }
  return compare(a.length, b.length);
}

function codePointOrder(unit) {
  if (unit >= 0xe000) {
    return unit - 0x800;
  }
  if (unit >= 0xd800) {
    return unit + 0x2000;
  }
  return unit;
}
