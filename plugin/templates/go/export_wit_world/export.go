// Package export_wit_world exports the rule (package rule) as the converge:rule world: the three
// functions the generated wit_exports.go calls. The package name is the one wit-bindgen's Go
// generator expects. Nothing here is specific to one rule: write the rule in package rule.
package export_wit_world

import (
	"wit_component/rule"
	"wit_component/wit_world"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Info describes the rule; converge calls it once when it loads the rule.
func Info() wit_world.RuleInfo {
	return wit_world.RuleInfo{
		Name:     rule.Name,
		Version:  rule.Version,
		Statuses: rule.Statuses,
	}
}

// Decide decides for one event.
func Decide(current witTypes.Option[wit_world.State], incoming wit_world.Event) wit_world.Decision {
	defer collecting()()
	return decide(current, incoming)
}

func decide(current witTypes.Option[wit_world.State], incoming wit_world.Event) wit_world.Decision {
	var stored *rule.Entity
	if current.IsSome() {
		state := rule.Entity(current.Some())
		stored = &state
	}
	return toWit(rule.Decide(stored, rule.Entity(incoming)))
}

// DecideBatch decides for many independent (current, incoming) pairs, in rule.
func DecideBatch(items []witTypes.Tuple2[witTypes.Option[wit_world.State], wit_world.Event]) []wit_world.Decision {
	defer collecting()()
	decisions := make([]wit_world.Decision, len(items))
	for i, item := range items {
		decisions[i] = decide(item.F0, item.F1)
	}
	return decisions
}

// toWit answers d as the WIT variant. rule.Entity has wit_world.Entity's fields, so one
// converts to the other.
func toWit(d rule.Decision) wit_world.Decision {
	switch d.Kind {
	case rule.Insert:
		return wit_world.MakeDecisionInsert(wit_world.Entity(d.State))
	case rule.Update:
		return wit_world.MakeDecisionUpdate(wit_world.Entity(d.State))
	case rule.Ignore:
		return wit_world.MakeDecisionIgnore(d.Reason)
	default:
		return wit_world.MakeDecisionReject(d.Reason)
	}
}
