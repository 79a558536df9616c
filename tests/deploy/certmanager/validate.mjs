// Validates cert-manager objects (a JSON list on stdin) with the validators kubernetes-models
// generates from cert-manager's CRDs: types, enums, required fields. Prints one line per
// problem; exit 1 if any. Run by tests/deploy/validate_manifests.py.
import * as v1 from "@kubernetes-models/cert-manager/cert-manager.io/v1";

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
}
process.exit(bad ? 1 : 0);
