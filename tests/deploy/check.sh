#!/usr/bin/env bash
# Checks deploy/: every kustomize overlay renders (`kubectl kustomize`), every rendered object
# validates offline and strictly (core kinds against the Kubernetes schemas kubernetes-validate
# carries, the JobSet against its CRD, cert-manager's kinds with its validators from npm), the
# objects fit together (tests/deploy/validate_manifests.py, itself checked to refuse broken
# renders by tests/deploy/mutations.py), the recipes of docs/deploy.md (a token Secret of one's
# own, a Kueue queue) render and validate, and the image builds where a Docker engine answers
# (skipped, with the reason, where none does).
#
#   tests/deploy/check.sh
#
# Python: $PEFTRAIN_PYTHON, else the repository's .venv/bin/python (kubernetes-validate is in
# scripts/requirements.txt). kubectl: $KUBECTL, else the first kubectl on PATH that is new
# enough (kustomize 5 is built into kubectl >= 1.27; Debian's kubernetes-client 1.20 is not).
# JobSet CRD: $JOBSET_CRD (scripts/env.sh points it at ../shared/schemas). node and npm: on PATH.
# Set PEFTRAIN_DOCKER_BUILD=0 to skip the image build even where Docker works.
# Exits non-zero if any check fails; the last line counts them.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY="$ROOT/deploy"
PY="${PEFTRAIN_PYTHON:-$ROOT/.venv/bin/python}"
MIN_KUBECTL_MINOR=27

passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP $*"; }
finish() {
  echo "deploy: $passed passed, $failed failed, $skipped skipped"
  [ "$failed" -eq 0 ]
  exit
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- tools -----------------------------------------------------------------------------------
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
  fail "python: $PY not found (set PEFTRAIN_PYTHON, or run scripts/setup.sh for .venv)"
  finish
fi
if ! kv_version="$("$PY" -c 'import kubernetes_validate.version as v; print(v.__version__)' 2>&1)"; then
  fail "python: $PY has no kubernetes_validate (pip install kubernetes-validate==1.37.0; it is in scripts/requirements.txt)"
  finish
fi
pass "python: $PY with kubernetes-validate $kv_version"

# Prints "MAJOR MINOR GITVERSION" of a kubectl client, or fails.
kubectl_version() {
  local out
  out="$("$1" version --client -o json 2>/dev/null)" || out=""
  if [ -n "$out" ]; then
    printf '%s' "$out" | "$PY" -c '
import json, re, sys
v = json.load(sys.stdin)["clientVersion"]
m = re.match(r"v?(\d+)\.(\d+)", v.get("gitVersion", ""))
print(m.group(1), m.group(2), v["gitVersion"]) if m else sys.exit(1)' 2>/dev/null && return 0
  fi
  # Old clients (1.20) know -o json too, but read the plain form if it is all there is.
  out="$("$1" version --client 2>&1)" || return 1
  if [[ "$out" =~ v([0-9]+)\.([0-9]+)\.[0-9A-Za-z.+-]* ]]; then
    echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]} ${BASH_REMATCH[0]}"
    return 0
  fi
  return 1
}

KUBECTL_BIN=""
if [ -n "${KUBECTL:-}" ]; then
  candidates=("$KUBECTL")
else
  mapfile -t candidates < <(type -ap kubectl | awk '!seen[$0]++')
fi
if [ "${#candidates[@]}" -eq 0 ]; then
  fail "kubectl: not found on PATH. The checks need kubectl >= 1.$MIN_KUBECTL_MINOR (kustomize 5 built in); Debian's kubernetes-client package (1.20) is too old and collides with it. Install a current kubectl, or point KUBECTL at one."
  finish
fi
seen_versions=()
for k in "${candidates[@]}"; do
  if v="$(kubectl_version "$k")"; then
    read -r major minor git <<<"$v"
    seen_versions+=("$k: $git")
    if [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge "$MIN_KUBECTL_MINOR" ]; }; then
      KUBECTL_BIN="$k"
      break
    fi
  else
    seen_versions+=("$k: no version")
  fi
done
if [ -z "$KUBECTL_BIN" ]; then
  fail "kubectl: none new enough (need >= 1.$MIN_KUBECTL_MINOR for kustomize 5; Debian's kubernetes-client 1.20 is too old): ${seen_versions[*]}"
  finish
fi
kustomize_version="$("$KUBECTL_BIN" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
pass "kubectl: $KUBECTL_BIN ($git, kustomize ${kustomize_version:-built in})"

# --- cert-manager's validators (npm) ---------------------------------------------------------
if [ -z "${JOBSET_CRD:-}" ] || [ ! -f "$JOBSET_CRD" ]; then
  fail "JOBSET_CRD=${JOBSET_CRD:-} is not the JobSet CRD file (scripts/env.sh sets it from ../shared/schemas)"
  finish
fi
CM="$ROOT/tests/deploy/certmanager"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  fail "node and npm are needed for cert-manager's validators (tests/deploy/certmanager)"
  finish
fi
if [ ! -d "$CM/node_modules/@kubernetes-models/cert-manager" ]; then
  if ! npm ci --prefix "$CM" --no-audit --no-fund --loglevel=error >"$work/npm.log" 2>&1; then
    fail "npm ci --prefix tests/deploy/certmanager: $(tail -n 3 "$work/npm.log")"
    finish
  fi
fi
pass "cert-manager validators: @kubernetes-models/cert-manager $(node -p "require('$CM/node_modules/@kubernetes-models/cert-manager/package.json').version")"

validate() {
  "$PY" "$ROOT/tests/deploy/validate_manifests.py" --jobset-crd "$JOBSET_CRD" "$@"
}

# --- render and validate ---------------------------------------------------------------------
# name|directory|validator flags (what each overlay must contain beyond the schemas)
targets=("base|$DEPLOY/base|--expect-workers 2 --expect-device cpu")
for dir in "$DEPLOY"/overlays/*/; do
  dir="${dir%/}"
  name="$(basename "$dir")"
  case "$name" in
    dev) flags="--expect-workers 2 --expect-device cpu" ;;
    gpu) flags="--expect-device cuda --expect-gpu" ;;
    gpu-tls) flags="--expect-device cuda --expect-gpu --expect-tls" ;;
    *) flags="" ;;
  esac
  targets+=("overlays/$name|$dir|$flags")
done
for required in dev gpu gpu-tls; do
  [ -d "$DEPLOY/overlays/$required" ] || fail "overlay deploy/overlays/$required is missing"
done

for t in "${targets[@]}"; do
  IFS='|' read -r name dir flags <<<"$t"
  out="$work/$(echo "$name" | tr / _).yaml"
  if ! "$KUBECTL_BIN" kustomize "$dir" >"$out" 2>"$out.err"; then
    fail "render deploy/$name: $(cat "$out.err")"
    continue
  fi
  pass "render deploy/$name ($(grep -c '^kind:' "$out") objects)"
  # shellcheck disable=SC2086
  if report="$(validate $flags "$out" 2>&1)"; then
    pass "validate deploy/$name"
  else
    fail "validate deploy/$name"
  fi
  echo "$report" | sed "s|$work/||g"
done

for f in "$DEPLOY"/tools/*.yaml; do
  [ -e "$f" ] || continue
  if report="$(validate --plain "$f" 2>&1)"; then
    pass "validate deploy/tools/$(basename "$f")"
  else
    fail "validate deploy/tools/$(basename "$f")"
  fi
  echo "$report"
done

# --- the validator refuses what it should ----------------------------------------------------
# Each mutation of the dev or gpu-tls render breaks one rule; the validator must refuse every one.
if report="$("$PY" "$ROOT/tests/deploy/mutations.py" "$work/overlays_dev.yaml" "$work/overlays_gpu-tls.yaml" "$JOBSET_CRD" 2>&1)"; then
  pass "validator: $report"
else
  fail "validator: $report"
fi

# --- the recipes of docs/deploy.md: a token Secret of one's own, a Kueue queue ----------------
mine="$work/mine"
mkdir -p "$mine"
printf 'token-from-check-sh-%s-%s' "$$" "$RANDOM$RANDOM" >"$mine/token"
gpu_rel="$("$PY" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$DEPLOY/overlays/gpu" "$mine")"
cat >"$mine/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $gpu_rel
secretGenerator:
- name: peftrain-token
  namespace: peftrain
  files:
  - token
  options:
    disableNameSuffixHash: true
patches:
- target:
    group: jobset.x-k8s.io
    kind: JobSet
    name: peftrain
  patch: |-
    - op: add
      path: /metadata/labels/kueue.x-k8s.io~1queue-name
      value: team-a
    - op: add
      path: /spec/suspend
      value: true
EOF
if "$KUBECTL_BIN" kustomize "$mine" >"$work/mine.yaml" 2>"$work/mine.err" &&
   "$PY" - "$work/mine.yaml" "$mine/token" <<'EOF'
import base64, sys, yaml
objs = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
want = open(sys.argv[2]).read()
(secret,) = [o for o in objs if o["kind"] == "Secret"]
assert base64.b64decode(secret["data"]["token"]).decode() == want, "token not in the Secret"
(js,) = [o for o in objs if o["kind"] == "JobSet"]
refs = [v["secret"]["secretName"] for rj in js["spec"]["replicatedJobs"]
        for v in rj["template"]["spec"]["template"]["spec"]["volumes"] if "secret" in v]
assert refs and all(r == secret["metadata"]["name"] for r in refs), f"pods mount {refs}, not {secret['metadata']['name']}"
assert js["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and js["spec"]["suspend"] is True
EOF
then
  pass "recipes: a token Secret of one's own and a Kueue queue render as docs/deploy.md says"
else
  fail "recipes (token, Kueue): $(cat "$work/mine.err" 2>/dev/null)"
fi
# The user's overlay validates like the rest, its Secret allowed (it is theirs, not ours).
if report="$(validate --allow-secret --expect-device cuda --expect-gpu "$work/mine.yaml" 2>&1)"; then
  pass "validate the recipes' render"
else
  fail "validate the recipes' render"
fi
echo "$report" | sed "s|$work/||g"

# --- the image -------------------------------------------------------------------------------
# What can be checked without an engine: the context filter keeps the workspace, the runtime
# stage runs as a non-root user with peftrain as its entry point.
if "$PY" - "$ROOT" <<'EOF'
import fnmatch, os, re, sys, tomllib
root = sys.argv[1]
ignore = [l.strip() for l in open(os.path.join(root, "deploy/Dockerfile.dockerignore"))
          if l.strip() and not l.startswith("#")]
members = tomllib.load(open(os.path.join(root, "Cargo.toml"), "rb"))["workspace"]["members"]
needed = ["Cargo.toml", "Cargo.lock"] + members
bad = [n for n in needed for p in ignore if fnmatch.fnmatch(n, p.strip("/")) or n.startswith(p.strip("/") + "/")]
assert not bad, f"Dockerfile.dockerignore drops {bad}"
text = open(os.path.join(root, "deploy/Dockerfile")).read()
stages = re.split(r"(?m)^FROM\s+", text)
final = stages[-1]
users = re.findall(r"(?m)^USER\s+(\S+)", final)
assert users and users[-1].split(":")[0] not in ("root", "0"), f"final stage USER {users}"
assert re.search(r'(?m)^ENTRYPOINT\s+\[.*"peftrain"\]', final), "final stage ENTRYPOINT is not peftrain"
assert "cargo build --release --locked --workspace --bins" in text
EOF
then
  pass "Dockerfile: context keeps the workspace; runtime stage non-root, ENTRYPOINT peftrain"
else
  fail "Dockerfile static checks"
fi

if [ "${PEFTRAIN_DOCKER_BUILD:-1}" = "0" ]; then
  skip "docker build skipped: PEFTRAIN_DOCKER_BUILD=0"
elif ! command -v docker >/dev/null 2>&1; then
  skip "docker build skipped: no docker client on PATH"
elif ! docker_err="$(docker info 2>&1 >/dev/null)"; then
  reason="$(printf '%s\n' "$docker_err" | grep -v '^\s*$' | tail -n 1)"
  skip "docker build skipped: docker info failed: ${reason:-no engine}"
else
  echo "docker build -f deploy/Dockerfile . (the CUDA variant downloads ~4.7 GB of wheels)"
  if (cd "$ROOT" && DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile -t peftrain:check .); then
    pass "docker build"
    docker image inspect peftrain:check --format 'image size: {{.Size}} bytes' || true
  else
    fail "docker build"
  fi
fi

finish
