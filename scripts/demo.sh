#!/usr/bin/env bash
# The embedded default, end to end, from a fresh clone:
#   1. set up .venv (scripts/setup.sh)
#   2. start a local MLflow server (SQLite + artifacts in .bpiml/mlflow-artifacts) and a Ray head
#      (127.0.0.1 only, token authentication) from the project venv
#   3. through `ray job submit`: make the sample store, pseudo-label it, train the student,
#      register it in the MLflow model registry
#   4. print where to look. The services keep running for the MLflow UI: scripts/stack/down.sh stops them.
# Settings: BPIML_EPOCHS (default 10), BPIML_SAMPLE_IMAGES (default 48), BPIML_TEACHER (auto: GrabCut unless BPIML_SAM_CHECKPOINT is set),
# BPIML_SAM_CHECKPOINT, BPIML_MLFLOW_PORT (default: a free port), BPIML_RAY_NUM_CPUS (default 2),
# BPIML_GPUS_PER_WORKER (default 0: the local head has no GPU; SAM and the student at 224 px would otherwise wait
# for one, see docs/deployment.md "How jobs pick GPUs").
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

scripts/setup.sh

export BPIML_STACK_DIR="${BPIML_STACK_DIR:-$root/.bpiml/stack}"
export BPIML_MLFLOW_ARTIFACTS="${BPIML_MLFLOW_ARTIFACTS:-$root/.bpiml/mlflow-artifacts}"
tracking_uri="$(scripts/stack/start_mlflow.sh)"
dashboard="$(scripts/stack/start_ray.sh)"

# Clients of the head: its address and token file (the token itself is never printed).
export RAY_ADDRESS="$(cat "$BPIML_STACK_DIR/ray.gcs")" RAY_API_SERVER_ADDRESS="$dashboard" RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$BPIML_STACK_DIR/ray_auth_token"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # clients stay on 127.0.0.1 like the head
unset RAY_AUTH_TOKEN
data="$root/.bpiml"
run_name="demo-$(date +%Y%m%d-%H%M%S)"
teacher_args=(--teacher "${BPIML_TEACHER:-auto}")
gpus=(--gpus-per-worker "${BPIML_GPUS_PER_WORKER:-0}")
[[ -n "${BPIML_SAM_CHECKPOINT:-}" ]] && teacher_args+=(--checkpoint "$BPIML_SAM_CHECKPOINT")

submit() {
  echo
  echo "==> ray job submit -- $*"
  .venv/bin/ray job submit --working-dir . --submission-id "bpiml-$1-$run_name" -- "${@:2}"
}
# Paths are absolute: a submitted job runs in a copy of the working directory.
submit sample bpiml make-sample --out "$data/sample" --n "${BPIML_SAMPLE_IMAGES:-48}"
submit pseudolabel python jobs/pseudolabel.py --store "$data/sample" --out "$data/sample-pseudo" "${teacher_args[@]}" "${gpus[@]}"
submit train python jobs/train.py --store "$data/sample-pseudo" --storage-path "$data/runs" --run-name "$run_name" \
  --epochs "${BPIML_EPOCHS:-10}" --experiment bpiml-demo --register bpiml-student@champion "${gpus[@]}"

cat <<MSG

bpiml demo finished.
  MLflow UI            $tracking_uri   (experiment bpiml-demo; Models -> bpiml-student)
  registered model     models:/bpiml-student@champion
                       (MLFLOW_TRACKING_URI=$tracking_uri; bpiml.evaluation.inference.load_model("models:/bpiml-student@champion"))
  sample store         $data/sample
  pseudo masks         $data/sample-pseudo   (manifest/ shards, pseudo/, rejects/, summary.json)
  checkpoints          $data/runs/$run_name
  Ray dashboard        $dashboard   (token: $BPIML_STACK_DIR/ray_auth_token)
  predict one image    MLFLOW_TRACKING_URI=$tracking_uri .venv/bin/bpiml predict --model models:/bpiml-student@champion \\
                         --image $data/sample/images/<file>.jpg --out pred/   # pred/masks/, pred/probs/, pred/overlays/
  stop the services    scripts/stack/down.sh
MSG
