// Validates cert-manager objects (a JSON list on stdin) with what kubernetes-models generates
// from cert-manager's CRDs: its validators (types, enums, required fields) and, since a CRD's
// schema lets the API server prune unknown fields silently, a strict walk of the generated type
// declarations (.d.ts) that refuses every field they do not declare, as `kubectl
// --validate=strict` would. Prints one line per problem; exit 1 if any. Run by
// tests/deploy/validate_manifests.py.
import fs from "node:fs";
import path from "node:path";
import * as v1 from "@kubernetes-models/cert-manager/cert-manager.io/v1";

const modules = path.join(path.dirname(new URL(import.meta.url).pathname), "node_modules");
const declarations = new Map();

// The first interface of a .d.ts: its fields' types, and where its imported types live.
function declaration(file) {
  if (declarations.has(file)) return declarations.get(file);
  const text = fs.readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) {
    const spec = m[2].replace(/\.js$/, "");
    imports.set(m[1], spec.startsWith(".") ? path.resolve(path.dirname(file), spec + ".d.ts") : path.join(modules, spec + ".d.ts"));
  }
  const body = /export interface \w+(?: extends [\w, ]+)? \{\n([\s\S]*?)\n\}/.exec(text);
  if (!body) throw new Error(`${file}: no interface`);
  const fields = new Map();
  for (const m of body[1].matchAll(/^ {4}"([^"]+)"\??: (.+);?$/gm)) fields.set(m[1], m[2].replace(/;$/, ""));
  const d = { imports, fields };
  declarations.set(file, d);
  return d;
}

function strict(value, file, where, out) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return;
  const d = declaration(file);
  for (const [k, v] of Object.entries(value)) {
    if (!d.fields.has(k)) {
      out.push(`${where}.${k}: unknown field`);
      continue;
    }
    typed(v, d.fields.get(k), d, `${where}.${k}`, out);
  }
}

function typed(value, type, d, where, out) {
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (Array.isArray(value)) value.forEach((x, i) => typed(x, array[1], d, `${where}[${i}]`, out));
    return;
  }
  // A declared type of its own (maps written inline, `{`, and primitives have no fields to check).
  if (d.imports.has(type) && fs.existsSync(d.imports.get(type))) strict(value, d.imports.get(type), where, out);
}

const input = JSON.parse(await new Promise((resolve) => {
  let s = "";
  process.stdin.on("data", (d) => (s += d)).on("end", () => resolve(s));
}));
let bad = 0;
for (const o of input) {
  const name = `${o.kind}/${o.metadata?.name}`;
  const Model = o.apiVersion === "cert-manager.io/v1" ? v1[o.kind] : undefined;
  if (!Model) {
    console.log(`${name}: no cert-manager validator for ${o.apiVersion} ${o.kind}`);
    bad++;
    continue;
  }
  try {
    new Model(o).validate();
  } catch (e) {
    console.log(`${name}: ${e.message}`);
    bad++;
  }
  const unknown = [];
  strict(o, path.join(modules, "@kubernetes-models/cert-manager/cert-manager.io/v1", `${o.kind}.d.ts`), name, unknown);
  for (const u of unknown) console.log(u);
  bad += unknown.length;
}
process.exit(bad ? 1 : 0);
