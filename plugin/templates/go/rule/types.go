// The types a rule decides with, the converge:rule contract's (wit/rule.wit) in plain Go, so that
// the rule is tested natively; export_wit_world converts them to and from the bindings'.

package rule

// Entity is one observation of a key: a stored state or an incoming event (see wit/rule.wit).
type Entity struct {
	Key         string
	Status      string
	Version     uint64
	TimestampMs uint64
	Payload     string
}

// Kind is what a decision does.
type Kind int

const (
	// Insert stores State where nothing is stored yet.
	Insert Kind = iota
	// Update replaces the stored state with State.
	Update
	// Ignore writes nothing: the event is stale or a duplicate (Reason says which).
	Ignore
	// Reject writes nothing and dead-letters the event (Reason says why).
	Reject
)

// Decision is the rule's answer, mirroring the WIT decision variant: State for Insert and
// Update, Reason for Ignore and Reject.
type Decision struct {
	Kind   Kind
	State  Entity
	Reason string
}
