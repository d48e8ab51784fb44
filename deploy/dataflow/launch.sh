#!/usr/bin/env bash
# Run one dupmine stage from its Flex Template (built by build.sh).
#
#   deploy/dataflow/launch.sh embed                 # CPU workers
#   GPU=1 deploy/dataflow/launch.sh embed           # NVIDIA L4 workers, GPU image, NVIDIA MPS
#   deploy/dataflow/launch.sh dedup threshold=0.9   # extra KEY=VALUE pairs: template parameters or Beam options
#   deploy/dataflow/launch.sh mine
#
# Every KEY=VALUE argument is added to --parameters; parameter names are the
# stage's flags in snake_case (see metadata/STAGE.json), and any other name is
# handed to Beam as a pipeline option (num_workers=20, disk_size_gb=100, ...).
#
# Settings (environment): PROJECT, REGION, BUCKET, REPOSITORY, TAG (see env.sh), and
#   DATA        gs:// folder with the stage folders        (default: gs://BUCKET/dupmine)
#   INPUT       shards for embed                          (default: gs://BUCKET/laion/shards/{00000..00009}.tar)
#   EMBEDDINGS  embed output / dedup and mine input       (default: DATA/embeddings)
#   DEDUP       dedup output / mine --groups              (default: DATA/dedup)
#   MINE        mine output                               (default: DATA/mine)
#   VOCAB       object vocabulary for mine's zero-shot tagger (default: gs://BUCKET/vocab/lvis_v1_categories.json)
#   MAX_WORKERS autoscaling cap                           (default: 10)
#   MACHINE_TYPE worker machine type                      (default: n2-standard-8; with GPU=1: g2-standard-8)
#   LAUNCHER_MACHINE_TYPE launcher VM (loads the model once to check it) (default: n2-standard-4)
#   GPU=1       embed on GPUs: GPU_TYPE (default nvidia-l4, which needs G2 machine types), GPU_COUNT (default 1),
#               MPS=1 (default) shares each GPU between the VM's SDK processes with NVIDIA MPS;
#               MPS=0 runs one SDK process per VM instead (no_use_multiple_sdk_containers).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if [[ $# -lt 1 ]]; then
  echo "usage: $0 STAGE [KEY=VALUE ...]   (STAGE: one of the files in deploy/dataflow/metadata)" >&2
  exit 2
fi
STAGE="$1"
shift
if [[ ! -f "${REPO_ROOT}/deploy/dataflow/metadata/${STAGE}.json" ]]; then
  echo "no template for stage '${STAGE}' (deploy/dataflow/metadata/${STAGE}.json)" >&2
  exit 2
fi

DATA="${DATA:-gs://${BUCKET}/dupmine}"
# (a default with braces cannot sit inside ${INPUT:-...}: its first } would end the expansion)
EXAMPLE_INPUT="gs://${BUCKET}/laion/shards/{00000..00009}.tar"
INPUT="${INPUT:-${EXAMPLE_INPUT}}"
EMBEDDINGS="${EMBEDDINGS:-${DATA}/embeddings}"
DEDUP="${DEDUP:-${DATA}/dedup}"
MINE="${MINE:-${DATA}/mine}"
VOCAB="${VOCAB:-gs://${BUCKET}/vocab/lvis_v1_categories.json}"
MAX_WORKERS="${MAX_WORKERS:-10}"
LAUNCHER_MACHINE_TYPE="${LAUNCHER_MACHINE_TYPE:-n2-standard-4}"
GPU="${GPU:-0}"
GPU_TYPE="${GPU_TYPE:-nvidia-l4}"
GPU_COUNT="${GPU_COUNT:-1}"
MPS="${MPS:-1}"

params=("stage=${STAGE}")
experiments=(use_runner_v2)
case "${STAGE}" in
  embed) params+=("input=${INPUT}" "output=${EMBEDDINGS}") ;;
  dedup) params+=("embeddings=${EMBEDDINGS}" "output=${DEDUP}") ;;
  mine) params+=("embeddings=${EMBEDDINGS}" "groups=${DEDUP}" "output=${MINE}" "vocab=${VOCAB}") ;;
  *) ;;  # a stage added later: pass its parameters as KEY=VALUE arguments
esac

if [[ "${GPU}" == 1 ]]; then
  MACHINE_TYPE="${MACHINE_TYPE:-g2-standard-8}"
  accelerator="worker_accelerator=type:${GPU_TYPE};count:${GPU_COUNT};install-nvidia-driver"
  if [[ "${MPS}" == 1 ]]; then
    accelerator="${accelerator};use_nvidia_mps"
  else
    experiments+=(no_use_multiple_sdk_containers)
  fi
  # --device cuda fails loudly where the GPU is missing; auto would fall back to the CPU.
  params+=("device=cuda" "sdk_container_image=${GPU_WORKER_IMAGE}" "dataflow_service_options=${accelerator}")
else
  MACHINE_TYPE="${MACHINE_TYPE:-n2-standard-8}"
fi
params+=("$@")

# gcloud splits --parameters at commas; values may hold commas (shard lists,
# {a,b} braces), so use gcloud's alternate delimiter syntax: ^~^k1=v1~k2=v2.
joined="$(IFS='~'; echo "${params[*]}")"
experiments_joined="$(IFS=','; echo "${experiments[*]}")"
JOB_NAME="${JOB_NAME:-dupmine-${STAGE}-$(date -u +%Y%m%d-%H%M%S)}"

echo "== launching ${JOB_NAME} from ${TEMPLATE_PREFIX}-${STAGE}.json"
gcloud dataflow flex-template run "${JOB_NAME}" \
  --project "${PROJECT}" \
  --region "${REGION}" \
  --template-file-gcs-location "${TEMPLATE_PREFIX}-${STAGE}.json" \
  --staging-location "gs://${BUCKET}/dataflow/staging" \
  --temp-location "gs://${BUCKET}/dataflow/temp" \
  --launcher-machine-type "${LAUNCHER_MACHINE_TYPE}" \
  --worker-machine-type "${MACHINE_TYPE}" \
  --max-workers "${MAX_WORKERS}" \
  --additional-experiments "${experiments_joined}" \
  --parameters "^~^${joined}"
