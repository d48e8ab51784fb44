# Shared settings of build.sh and launch.sh (sourced, not run). Override any of
# them in the environment:
#   PROJECT     Google Cloud project            (default: gcloud config get-value project)
#   REGION      Dataflow and Artifact Registry region           (default: us-central1)
#   BUCKET      GCS bucket for template specs, staging and temp files, without gs://  (required)
#   REPOSITORY  Artifact Registry Docker repository             (default: dupmine)
#   TAG         image tag        (default: BEAM_VERSION-<git short hash>, or BEAM_VERSION outside git)
# Derived: BEAM_VERSION (from setup.py), REGISTRY, LAUNCHER_IMAGE, WORKER_IMAGE,
# GPU_WORKER_IMAGE, TEMPLATE_PREFIX (gs://BUCKET/templates/dupmine).
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BEAM_VERSION="$(sed -n 's/^BEAM_VERSION = "\(.*\)"$/\1/p' "${REPO_ROOT}/setup.py")"
if [[ -z "${BEAM_VERSION}" ]]; then
  echo "could not read BEAM_VERSION from ${REPO_ROOT}/setup.py" >&2
  exit 1
fi

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
if [[ -z "${PROJECT}" ]]; then
  echo "set PROJECT (or run: gcloud config set project PROJECT_ID)" >&2
  exit 1
fi
REGION="${REGION:-us-central1}"
if [[ -z "${BUCKET:-}" ]]; then
  echo "set BUCKET to a GCS bucket name (without gs://) for templates, staging and temp files" >&2
  exit 1
fi
REPOSITORY="${REPOSITORY:-dupmine}"
if [[ -z "${TAG:-}" ]]; then
  if GIT_HASH="$(git -C "${REPO_ROOT}" rev-parse --short HEAD 2>/dev/null)"; then
    TAG="${BEAM_VERSION}-${GIT_HASH}"
  else
    TAG="${BEAM_VERSION}"
  fi
fi

REGISTRY="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}"
LAUNCHER_IMAGE="${REGISTRY}/dupmine-launcher:${TAG}"
WORKER_IMAGE="${REGISTRY}/dupmine-worker:${TAG}"
GPU_WORKER_IMAGE="${REGISTRY}/dupmine-worker-gpu:${TAG}"
TEMPLATE_PREFIX="gs://${BUCKET}/templates/dupmine"
export REPO_ROOT BEAM_VERSION PROJECT REGION BUCKET REPOSITORY TAG REGISTRY \
  LAUNCHER_IMAGE WORKER_IMAGE GPU_WORKER_IMAGE TEMPLATE_PREFIX
