#!/usr/bin/env bash
# Build dupmine's Dataflow images and one Flex Template spec per stage.
#
#   BUCKET=my-bucket deploy/dataflow/build.sh
#
# Steps:
#   1. create the Artifact Registry Docker repository REPOSITORY in REGION (once);
#   2. build and push the worker image (Dockerfile.worker), the GPU worker image
#      (Dockerfile.worker-gpu, skipped with BUILD_GPU=0) and the launcher image
#      (Dockerfile, which records the worker image as the default sdk_container_image);
#   3. check that metadata/*.json is up to date with the stages' flags;
#   4. write gs://BUCKET/templates/dupmine-STAGE.json for every metadata/STAGE.json.
#
# Settings (environment): PROJECT, REGION, BUCKET, REPOSITORY, TAG (see env.sh), and
#   BUILDER         cloudbuild (default: builds on Cloud Build, no local Docker needed) or docker
#   BUILD_GPU       1 (default) to build the GPU worker image, 0 to skip it
#   PRELOAD_MODELS  --model specs baked into the worker images
#                   (default: openclip:ViT-B-32/laion2b_s34b_b79k; empty: none)
#   PYTHON          Python with the project's dependencies, for the metadata check
#                   (default: REPO_ROOT/.venv/bin/python)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

BUILDER="${BUILDER:-cloudbuild}"
BUILD_GPU="${BUILD_GPU:-1}"
PRELOAD_MODELS="${PRELOAD_MODELS-openclip:ViT-B-32/laion2b_s34b_b79k}"
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"
DEPLOY_DIR="${REPO_ROOT}/deploy/dataflow"

# build_image DOCKERFILE IMAGE: build IMAGE from DOCKERFILE (context: the repository root) and push it.
build_image() {
  local dockerfile="$1" image="$2"
  echo "== building ${image} from ${dockerfile}"
  case "${BUILDER}" in
    cloudbuild)
      # From the repository root, so the upload (.) and --ignore-file resolve alike.
      (cd "${REPO_ROOT}" && gcloud builds submit . \
        --project "${PROJECT}" --region "${REGION}" \
        --config deploy/dataflow/cloudbuild.yaml \
        --ignore-file deploy/dataflow/.gcloudignore \
        --substitutions "^~^_DOCKERFILE=${dockerfile}~_IMAGE=${image}~_BEAM_VERSION=${BEAM_VERSION}~_WORKER_IMAGE=${WORKER_IMAGE}~_PRELOAD_MODELS=${PRELOAD_MODELS}")
      ;;
    docker)
      DOCKER_BUILDKIT=1 docker build "${REPO_ROOT}" \
        --file "${REPO_ROOT}/${dockerfile}" \
        --tag "${image}" \
        --build-arg "BEAM_VERSION=${BEAM_VERSION}" \
        --build-arg "WORKER_IMAGE=${WORKER_IMAGE}" \
        --build-arg "PRELOAD_MODELS=${PRELOAD_MODELS}"
      docker push "${image}"
      ;;
    *)
      echo "BUILDER must be cloudbuild or docker, got '${BUILDER}'" >&2
      exit 2
      ;;
  esac
}

echo "== project ${PROJECT}, region ${REGION}, Beam ${BEAM_VERSION}, tag ${TAG}"

# 1. Artifact Registry repository.
if ! gcloud artifacts repositories describe "${REPOSITORY}" \
    --project "${PROJECT}" --location "${REGION}" >/dev/null 2>&1; then
  gcloud artifacts repositories create "${REPOSITORY}" \
    --project "${PROJECT}" --location "${REGION}" \
    --repository-format docker --description "dupmine images"
fi
if [[ "${BUILDER}" == docker ]]; then
  gcloud auth configure-docker "${REGION}-docker.pkg.dev" --quiet
fi

# 2. Images: workers first, the launcher records WORKER_IMAGE.
build_image deploy/dataflow/Dockerfile.worker "${WORKER_IMAGE}"
if [[ "${BUILD_GPU}" == 1 ]]; then
  build_image deploy/dataflow/Dockerfile.worker-gpu "${GPU_WORKER_IMAGE}"
fi
build_image deploy/dataflow/Dockerfile "${LAUNCHER_IMAGE}"

# 3. The committed metadata must describe the flags of the code in the images.
"${PYTHON}" "${DEPLOY_DIR}/make_metadata.py" --check

# 4. One template spec per stage, all on the same launcher image.
shopt -s nullglob
metadata_files=("${DEPLOY_DIR}"/metadata/*.json)
if [[ ${#metadata_files[@]} -eq 0 ]]; then
  echo "no metadata in ${DEPLOY_DIR}/metadata; run: ${PYTHON} ${DEPLOY_DIR}/make_metadata.py" >&2
  exit 1
fi
for metadata in "${metadata_files[@]}"; do
  stage="$(basename "${metadata}" .json)"
  spec="${TEMPLATE_PREFIX}-${stage}.json"
  echo "== template ${spec}"
  gcloud dataflow flex-template build "${spec}" \
    --project "${PROJECT}" \
    --image "${LAUNCHER_IMAGE}" \
    --sdk-language PYTHON \
    --metadata-file "${metadata}"
done

echo "== done. Launcher ${LAUNCHER_IMAGE}, worker ${WORKER_IMAGE}"
if [[ "${BUILD_GPU}" == 1 ]]; then
  echo "   GPU worker ${GPU_WORKER_IMAGE}"
fi
echo "   run a stage: deploy/dataflow/launch.sh embed"
