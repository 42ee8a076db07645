// Package export_wit_world exports the order-status rule (package order) as the converge:rule
// world: the three functions the generated wit_exports.go calls. The package name is the one
// wit-bindgen's Go generator expects.
package export_wit_world

import (
	"wit_component/order"
	"wit_component/wit_world"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Info describes the rule; converge calls it once when it loads the rule.
func Info() wit_world.RuleInfo {
	return wit_world.RuleInfo{
		Name:     order.Name,
		Version:  order.Version,
		Statuses: order.Statuses,
	}
}

// Decide decides for one event.
func Decide(current witTypes.Option[wit_world.State], incoming wit_world.Event) wit_world.Decision {
	defer collecting()()
	return decide(current, incoming)
}

func decide(current witTypes.Option[wit_world.State], incoming wit_world.Event) wit_world.Decision {
	var stored *order.Entity
	if current.IsSome() {
		state := order.Entity(current.Some())
		stored = &state
	}
	return toWit(order.Decide(stored, order.Entity(incoming)))
}

// DecideBatch decides for many independent (current, incoming) pairs, in order.
func DecideBatch(items []witTypes.Tuple2[witTypes.Option[wit_world.State], wit_world.Event]) []wit_world.Decision {
	defer collecting()()
	decisions := make([]wit_world.Decision, len(items))
	for i, item := range items {
		decisions[i] = decide(item.F0, item.F1)
	}
	return decisions
}

// toWit answers d as the WIT variant. order.Entity has wit_world.Entity's fields, so one
// converts to the other.
func toWit(d order.Decision) wit_world.Decision {
	switch d.Kind {
	case order.Insert:
		return wit_world.MakeDecisionInsert(wit_world.Entity(d.State))
	case order.Update:
		return wit_world.MakeDecisionUpdate(wit_world.Entity(d.State))
	case order.Ignore:
		return wit_world.MakeDecisionIgnore(d.Reason)
	default:
		return wit_world.MakeDecisionReject(d.Reason)
	}
}
