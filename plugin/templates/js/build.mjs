// Componentizes a rule module against the converge:rule WIT with componentize-js's library API,
// every WASI feature disabled (a rule imports nothing), and writes the component:
//
//   node build.mjs SOURCE.js OUT.wasm WIT_DIR
//
// CONVERGE_RULE_VERSION, when set, is the version the rule reports: it replaces the value of the
// module's `const VERSION = "...";` line, in a copy beside it (so that its imports resolve).
//
// The library API rather than `jco componentize`: the command failed here with "failed to get
// path metadata".
import { readFile, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";

import { componentize } from "@bytecodealliance/componentize-js";

const [source, output, wit] = process.argv.slice(2).map((path) => resolve(path));
if (wit === undefined) {
  console.error("usage: node build.mjs SOURCE.js OUT.wasm WIT_DIR");
  process.exit(2);
}

let sourcePath = source;
const version = process.env.CONVERGE_RULE_VERSION;
if (version) {
  const line = /^const VERSION = ".*";$/m;
  const text = await readFile(source, "utf8");
  if (!line.test(text)) {
    console.error(`CONVERGE_RULE_VERSION is set but ${source} has no line const VERSION = "...";`);
    process.exit(2);
  }
  sourcePath = join(dirname(source), `.${basename(source, ".js")}.versioned.js`);
  await writeFile(sourcePath, text.replace(line, `const VERSION = ${JSON.stringify(version)};`));
}
try {
  const { component } = await componentize({
    sourcePath,
    witPath: wit,
    worldName: "rule",
    // No stdio, random, clocks or http: a rule imports nothing (wit/rule.wit).
    disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
  });
  await writeFile(output, component);
  console.log(`built ${output} (${component.length} bytes)`);
} finally {
  if (sourcePath !== source) {
    await rm(sourcePath, { force: true });
  }
}
