// Package rule is the rule {{name}}: for each key, the newest state wins.
//
// converge calls Decide with what is stored for a key (nil: nothing) and one incoming event; the
// answer must depend on nothing else. It converges because "newer" is a total order on states:
// whatever order events arrive in, every key ends on the newest one. Change Statuses and
// newness to your domain, and keep that property: `converge check` tests it.
package rule

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Name is the rule's name, stamped with Version on every state it writes.
const Name = "{{name}}"

// Version is the rule's version; build.sh sets it from CONVERGE_RULE_VERSION when given.
var Version = "0.1.0"

// Statuses are the statuses this rule stores, oldest first: a later status is newer at equal
// versions and times.
var Statuses = []string{"created", "updated", "deleted"}

// Decide decides whether incoming should replace current.
func Decide(current *Entity, incoming Entity) Decision {
	switch {
	case incoming.Key == "":
		return Decision{Kind: Reject, Reason: "empty key"}
	case !slices.Contains(Statuses, incoming.Status):
		return Decision{Kind: Reject, Reason: "unknown status " + strconv.Quote(incoming.Status)}
	case current == nil:
		return Decision{Kind: Insert, State: incoming}
	case current.Key != incoming.Key:
		return Decision{Kind: Reject, Reason: "stored key does not match the event's key"}
	}
	newer := newness(incoming, *current)
	if newer > 0 {
		return Decision{Kind: Update, State: incoming}
	}
	reason := "stale"
	if newer == 0 {
		reason = "duplicate"
	}
	return Decision{Kind: Ignore, Reason: reason}
}

// newness compares a with b by version, then time, then status, then payload bytes, so that
// two different states never tie (a tie would let delivery order decide). A stored status this
// rule does not know (written by another rule) is older than any other.
func newness(a, b Entity) int {
	return cmp.Or(
		cmp.Compare(a.Version, b.Version),
		cmp.Compare(a.TimestampMs, b.TimestampMs),
		cmp.Compare(slices.Index(Statuses, a.Status), slices.Index(Statuses, b.Status)),
		strings.Compare(a.Payload, b.Payload),
	)
}
