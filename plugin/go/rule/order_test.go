package rule

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
)

func order(status string, version, timestampMs uint64, payload string) Entity {
	return Entity{Key: "order-1", Status: status, Version: version, TimestampMs: timestampMs, Payload: payload}
}

func TestFirstEventOfAKeyIsInserted(t *testing.T) {
	event := order("paid", 1, 10, "{}")
	if got := Decide(nil, event); got != (Decision{Kind: Insert, State: event}) {
		t.Fatalf("got %+v", got)
	}
}

func TestNewnessOrder(t *testing.T) {
	for _, c := range []struct {
		name              string
		current, incoming Entity
		want              Decision
	}{
		{"a later status wins", order("paid", 0, 0, "{}"), order("completed", 0, 0, "{}"),
			Decision{Kind: Update, State: order("completed", 0, 0, "{}")}},
		{"an earlier status is stale", order("refunded", 0, 0, "{}"), order("completed", 0, 0, "{}"),
			Decision{Kind: Ignore, Reason: "stale"}},
		{"status outranks version and timestamp", order("paid", 1, 1, "{}"), order("created", 9, 9, "{}"),
			Decision{Kind: Ignore, Reason: "stale"}},
		{"then version", order("paid", 1, 5, "{}"), order("paid", 2, 1, "{}"),
			Decision{Kind: Update, State: order("paid", 2, 1, "{}")}},
		{"then timestamp", order("paid", 1, 6, "{}"), order("paid", 1, 5, "{}"),
			Decision{Kind: Ignore, Reason: "stale"}},
		{"then payload bytes", order("paid", 1, 5, `{"table":1}`), order("paid", 1, 5, `{"table":2}`),
			Decision{Kind: Update, State: order("paid", 1, 5, `{"table":2}`)}},
		{"payload the other way", order("paid", 1, 5, `{"table":2}`), order("paid", 1, 5, `{"table":1}`),
			Decision{Kind: Ignore, Reason: "stale"}},
		{"an exact duplicate", order("completed", 3, 7, "{}"), order("completed", 3, 7, "{}"),
			Decision{Kind: Ignore, Reason: "duplicate"}},
		{"a state of an unknown status is replaced", order("legacy", 9, 9, "{}"), order("paid", 0, 0, "{}"),
			Decision{Kind: Update, State: order("paid", 0, 0, "{}")}},
		{"the largest versions compare as unsigned", order("paid", 1<<63-1, 0, "{}"), order("paid", 1<<64-1, 0, "{}"),
			Decision{Kind: Update, State: order("paid", 1<<64-1, 0, "{}")}},
	} {
		current := c.current
		if got := Decide(&current, c.incoming); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestReasonsQuoteAsTheRustRuleDoes(t *testing.T) {
	for _, c := range []struct {
		current  *Entity
		incoming Entity
		want     string
	}{
		{nil, order("ship\"ped\n\x01é", 0, 0, "{}"), `unknown status "ship\"ped\n\u{1}é"`},
		{nil, Entity{Status: "paid"}, "empty key"},
		{&Entity{Key: "order-2", Status: "created"}, order("paid", 0, 0, "{}"),
			`stored key "order-2" does not match event key "order-1"`},
	} {
		got := Decide(c.current, c.incoming)
		if got.Kind != Reject || got.Reason != c.want {
			t.Errorf("got %+v, want a rejection %q", got, c.want)
		}
	}
}

// The conformance vectors shipped beside the Rust rule (plugin/vectors/order-status.json), run
// against this core; converge runs the same file through the compiled component.
func TestShippedVectors(t *testing.T) {
	text, err := os.ReadFile("../../vectors/order-status.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Vectors []struct {
			Name     string
			Current  map[string]json.RawMessage
			Incoming map[string]json.RawMessage
			Expect   json.RawMessage
		}
	}
	if err := json.Unmarshal(text, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) < 15 {
		t.Fatalf("the vector file lost cases: %d", len(file.Vectors))
	}
	for _, v := range file.Vectors {
		var current *Entity
		if v.Current != nil {
			e := entity(t, v.Current)
			current = &e
		}
		got := Decide(current, entity(t, v.Incoming))
		var kind string
		if json.Unmarshal(v.Expect, &kind) == nil {
			want := map[string]Kind{"ignore": Ignore, "reject": Reject}[kind]
			if got.Kind != want {
				t.Errorf("%s: expected %s, got %+v", v.Name, kind, got)
			}
			continue
		}
		var expect map[string]map[string]json.RawMessage
		if err := json.Unmarshal(v.Expect, &expect); err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		want := Decision{Kind: Insert, State: entity(t, expect["insert"])}
		if update, ok := expect["update"]; ok {
			want = Decision{Kind: Update, State: entity(t, update)}
		}
		if got != want {
			t.Errorf("%s: expected %+v, got %+v", v.Name, want, got)
		}
	}
}

// entity reads the JSON form of an entity (see converge's entity module): the payload is a
// JSON value, passed to the rule as canonical text (compact, object keys sorted).
func entity(t *testing.T, fields map[string]json.RawMessage) Entity {
	t.Helper()
	var e Entity
	json.Unmarshal(fields["key"], &e.Key)
	json.Unmarshal(fields["status"], &e.Status)
	json.Unmarshal(fields["version"], &e.Version)
	json.Unmarshal(fields["timestamp_ms"], &e.TimestampMs)
	e.Payload = "null"
	if raw, ok := fields["payload"]; ok {
		decoder := json.NewDecoder(bytes.NewReader(raw))
		decoder.UseNumber()
		var value any
		if err := decoder.Decode(&value); err != nil {
			t.Fatal(err)
		}
		var text bytes.Buffer
		encoder := json.NewEncoder(&text)
		encoder.SetEscapeHTML(false)
		if err := encoder.Encode(value); err != nil {
			t.Fatal(err)
		}
		e.Payload = string(bytes.TrimRight(text.Bytes(), "\n"))
	}
	return e
}
