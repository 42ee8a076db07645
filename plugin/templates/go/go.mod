// The module name is the one wit-bindgen's Go generator writes into the bindings it generates
// (wit_exports.go imports wit_component/export_wit_world).
module wit_component

go 1.27.1

require go.bytecodealliance.org/pkg v0.4.0

// The generated bindings' runtime. The Go module proxy does not serve it; the same module ships
// inside the crates.io crate wit-bindgen-go (src/pkg), which build.sh links here.
replace go.bytecodealliance.org/pkg => ./.pkg
