// Validates an AsyncAPI document with @asyncapi/parser (from node_modules, no
// CLI: the CLI needs a newer Node and sends telemetry). Prints the errors and
// warnings (not the hints, such as a newer AsyncAPI version existing); exits 1
// on any error, 2 when it cannot run.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

const SEVERITY = ["error", "warning", "info", "hint"];

async function main(path) {
  if (!path) {
    console.error("usage: node tools/check_asyncapi.mjs <document.yaml>");
    return 2;
  }
  let text;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    console.error(`${path}: ${error.message}`);
    return 2;
  }
  const { document, diagnostics } = await new Parser().parse(text, { source: path });
  for (const d of diagnostics.filter((d) => d.severity <= DiagnosticSeverity.Warning)) {
    const line = (d.range?.start?.line ?? -1) + 1;
    const where = d.path?.length ? ` at ${d.path.join(".")}` : "";
    console.error(`${path}:${line}: ${SEVERITY[d.severity] ?? d.severity} ${d.code}: ${d.message}${where}`);
  }
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  if (errors.length || document === undefined) {
    console.error(`${path}: ${errors.length} error(s): not a valid AsyncAPI document`);
    return 1;
  }
  console.log(`${path}: valid AsyncAPI ${document.version()}`);
  return 0;
}

process.exitCode = await main(process.argv[2]);
