// The rule `{{name}}`: for each key, the newest state wins.
//
// converge calls `decide` with what is stored for a key (if anything) and one incoming event;
// the answer must depend on nothing else. It converges because "newer" is a total order on
// states: whatever order events arrive in, every key ends on the newest one. Change `STATUSES`
// and `newness` to your domain, and keep that property: `converge check` tests it.
//
// componentize-js exports this module's `info`, `decide` and `decideBatch` as the
// `converge:rule` world (wit/rule.wit): an `option` is the value or `undefined`, a `variant` is
// `{ tag, val }`, and the `u64` fields (`version`, `timestampMs`) are BigInts, exact over the
// whole range (a Number is exact only to 2^53).

const NAME = "{{name}}";
// build.sh replaces this value with $CONVERGE_RULE_VERSION when that is set.
const VERSION = "0.1.0";

/** The statuses this rule stores, oldest first: a later status is newer at equal versions and times. */
const STATUSES = ["created", "updated", "deleted"];

export function info() {
  return { name: NAME, version: VERSION, statuses: [...STATUSES] };
}

/** Decides whether `incoming` should replace `current` (`undefined`: nothing stored). */
export function decide(current, incoming) {
  if (incoming.key === "") {
    return { tag: "reject", val: "empty key" };
  }
  if (!STATUSES.includes(incoming.status)) {
    return { tag: "reject", val: `unknown status ${JSON.stringify(incoming.status)}` };
  }
  if (current === undefined) {
    return { tag: "insert", val: incoming };
  }
  if (current.key !== incoming.key) {
    return { tag: "reject", val: "stored key does not match the event's key" };
  }
  const newer = newness(incoming, current);
  if (newer > 0) {
    return { tag: "update", val: incoming };
  }
  return { tag: "ignore", val: newer === 0 ? "duplicate" : "stale" };
}

/** `decide` for each (current, incoming) pair, in order. */
export function decideBatch(items) {
  return items.map(([current, incoming]) => decide(current, incoming));
}

/**
 * Compares `a` with `b` by version, then time, then status, then payload, so that two different
 * states never tie (a tie would let delivery order decide). A stored status this rule does not
 * know (written by another rule) is older than any other.
 */
function newness(a, b) {
  return (
    sign(a.version, b.version) ||
    sign(a.timestampMs, b.timestampMs) ||
    sign(STATUSES.indexOf(a.status), STATUSES.indexOf(b.status)) ||
    byCodePoints(a.payload, b.payload)
  );
}

function sign(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Compares two strings by code point: the order of their UTF-8 bytes, which converge and rules in
 * other languages use. (`<` compares UTF-16 units, which puts characters above U+FFFF before
 * some below it.) At the first unit that differs, `codePointAt` reads a whole character, or two
 * low surrogates after the same high one, which order as their characters do.
 */
function byCodePoints(a, b) {
  if (a === b) {
    return 0;
  }
  let i = 0;
  while (i < a.length && i < b.length && a.charCodeAt(i) === b.charCodeAt(i)) {
    i++;
  }
  // Past the end of one: the shorter string, a prefix of the other, is older.
  return sign(a.codePointAt(i) ?? -1, b.codePointAt(i) ?? -1);
}
