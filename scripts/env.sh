# Sourced by the scripts: one place for the variables every build and run must share.
# torch-sys rebuilds (minutes) whenever LIBTORCH_USE_PYTORCH or the interpreter path changes,
# so every entry point exports exactly these.
PEFTRAIN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PEFTRAIN_ROOT
export VIRTUAL_ENV="$PEFTRAIN_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export PEFTRAIN_PYTHON="$VIRTUAL_ENV/bin/python"
# Shared data and the roberta-base tokenizer/config: a user's own paths win.
if [ -z "${GLUE_DIR:-}" ] && [ -d "$PEFTRAIN_ROOT/../shared/data/glue" ]; then
  export GLUE_DIR="$(cd "$PEFTRAIN_ROOT/../shared/data/glue" && pwd)"
fi
if [ -z "${ROBERTA_DIR:-}" ] && [ -d "$PEFTRAIN_ROOT/../shared/models/roberta-base" ]; then
  export ROBERTA_DIR="$(cd "$PEFTRAIN_ROOT/../shared/models/roberta-base" && pwd)"
fi
# The JobSet CRD the manifests are validated against (tests/deploy/check.sh).
if [ -z "${JOBSET_CRD:-}" ] && [ -f "$PEFTRAIN_ROOT/../shared/schemas/jobset.x-k8s.io_jobsets-v0.9.1.yaml" ]; then
  export JOBSET_CRD="$(cd "$PEFTRAIN_ROOT/../shared/schemas" && pwd)/jobset.x-k8s.io_jobsets-v0.9.1.yaml"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
