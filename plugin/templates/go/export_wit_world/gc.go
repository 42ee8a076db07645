package export_wit_world

import "runtime/debug"

// The Go collector runs only inside the rule's exported calls, and every collection started
// there ends there.
//
// Why: before each call the host asks the component to allocate the call's arguments
// (cabi_realloc), and the component model forbids a component to call out to the host then.
// The collector calls out (it reads the clock when a collection ends), so a collection that
// was still under way when a call returned, or that the allocation itself started, would end
// inside cabi_realloc and trap ("cannot leave component instance"). The bindings' runtime
// pauses the adapter's monotonic clock there, but not the wall clock the collector also reads.
//
// So: collection off between calls (set here at start-up), on during a call, and off again at
// its end, which waits for a collection under way to finish first.
func init() {
	debug.SetGCPercent(-1)
}

// collecting turns the collector on for the rest of an exported call and returns what turns
// it off again (deferred at the call's start).
func collecting() func() {
	debug.SetGCPercent(100)
	return func() { debug.SetGCPercent(-1) }
}
