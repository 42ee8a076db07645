// Package rule is the order-status rule as a pure function, in plain Go: no bindings, no
// WebAssembly, tested natively (`go test ./rule`, after build.sh). It is the Rust rule's core
// (plugin/src/core.rs) decision for decision. Its types (types.go), the export as the
// converge:rule world (export_wit_world) and go.mod are the Go template's
// (plugin/templates/go), which build.sh adds to this folder.
//
// An order moves through created < paid < completed < refunded. An incoming event replaces the
// stored state only if it is newer: higher status rank, then (same status) higher version, then
// later source timestamp, and — when all of these agree but the payloads differ — the payload
// that sorts higher byte-wise. The last step makes the order total, so the stored state never
// depends on which of two conflicting observations arrived last.
package rule

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// Name is the rule's name, stamped on every state it writes.
const Name = "order-status"

// Version is the rule's version, stamped with Name on every state it writes. build.sh sets it
// from CONVERGE_RULE_VERSION when given (-ldflags -X), as the Rust rule's build does.
var Version = "0.1.0"

// Statuses is the order lifecycle, oldest first. An order never moves to an earlier status.
var Statuses = []string{"created", "paid", "completed", "refunded"}

// Decide decides whether incoming should replace current (nil: nothing stored for the key).
func Decide(current *Entity, incoming Entity) Decision {
	if incoming.Key == "" {
		return Decision{Kind: Reject, Reason: "empty key"}
	}
	incomingRank := rank(incoming.Status)
	if incomingRank < 0 {
		return Decision{Kind: Reject, Reason: "unknown status " + debugQuote(incoming.Status)}
	}
	if current == nil {
		return Decision{Kind: Insert, State: incoming}
	}
	if current.Key != incoming.Key {
		return Decision{Kind: Reject, Reason: fmt.Sprintf(
			"stored key %s does not match event key %s",
			debugQuote(current.Key), debugQuote(incoming.Key))}
	}
	// A stored status this rule does not know was written by another rule: any known status
	// is considered newer, so the key moves back under this rule's lifecycle.
	currentRank := rank(current.Status)
	if currentRank < 0 {
		return Decision{Kind: Update, State: incoming}
	}
	newness := cmp.Or(
		cmp.Compare(incomingRank, currentRank),
		cmp.Compare(incoming.Version, current.Version),
		cmp.Compare(incoming.TimestampMs, current.TimestampMs),
		// Go compares strings byte-wise, as the Rust rule compares payload bytes.
		strings.Compare(incoming.Payload, current.Payload),
	)
	switch {
	case newness > 0:
		return Decision{Kind: Update, State: incoming}
	case newness == 0:
		return Decision{Kind: Ignore, Reason: "duplicate"}
	default:
		return Decision{Kind: Ignore, Reason: "stale"}
	}
}

// rank is the position of status in Statuses, or -1 for an unknown status.
func rank(status string) int {
	return slices.Index(Statuses, status)
}

// debugQuote quotes s the way the Rust rule's reasons do ({:?}): in double quotes, with \" \\
// \n \r \t \0 escaped and other unprintable characters as \u{hex}, so both rules give the same
// reason text.
func debugQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case 0:
			b.WriteString(`\0`)
		default:
			if unicode.IsPrint(r) {
				b.WriteRune(r)
			} else {
				fmt.Fprintf(&b, `\u{%x}`, r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
