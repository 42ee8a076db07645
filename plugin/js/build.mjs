// Componentizes rule.js (or the module given as the first argument) against wit/rule.wit with
// componentize-js's library API, all WASI features disabled, and writes the component to the
// second argument (default: order-status.wasm beside this file).
//
// The library API rather than `jco componentize`: the command failed here with "failed to get
// path metadata" (see README).
import { writeFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { componentize } from "@bytecodealliance/componentize-js";

const here = dirname(fileURLToPath(import.meta.url));
const [source = resolve(here, "rule.js"), output = resolve(here, "order-status.wasm")] =
  process.argv.slice(2);
const wit = process.env.CONVERGE_WIT ?? resolve(here, "../../wit");

const { component } = await componentize({
  sourcePath: resolve(source),
  witPath: wit,
  worldName: "rule",
  // No stdio, random, clocks or http: a rule imports nothing (wit/rule.wit).
  disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
});
await writeFile(output, component);
console.log(`wrote ${output} (${component.length} bytes)`);
