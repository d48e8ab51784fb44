#!/usr/bin/env bash
# Worked example: `dupmine embed` then `dupmine dedup` on the local Flink cluster of
# docker-compose.yaml, through Beam's portable FlinkRunner.
#
#   docker compose -f deploy/flink/docker-compose.yaml up -d --build
#   deploy/flink/run_example.sh
#
# It writes a small synthetic dataset (two img2dataset shards with planted
# duplicates, make_example_data.py) to DATA/shards, embeds it with the
# weight-free `pixel` model into DATA/embeddings and groups it into DATA/dedup.
#
# Settings (environment):
#   PYTHON         Python 3.11 with dupmine's dependencies (default: REPO_ROOT/.venv/bin/python);
#                  the SDK harness in the TaskManager runs Python 3.11 too, and the
#                  two must match (pickled functions do not cross Python versions)
#   DATA           data folder, bind-mounted at the same path in the containers
#                  (default: DUPMINE_FLINK_DATA, else /tmp/dupmine-flink)
#   SUBMIT         uberjar (default): --runner=FlinkRunner --flink_submit_uber_jar, the job
#                  and its artifacts go to the JobManager's REST API in one jar, no job server;
#                  jobserver: --runner=PortableRunner against the compose job server
#   FLINK_MASTER   JobManager REST address   (default: localhost:8081)
#   FLINK_VERSION  Flink major version       (default: 2.2; one of Beam 2.77's published versions)
#   FLINK_JOB_SERVER_JAR  local beam-runners-flink-2.2-job-server-2.77.0.jar (default: Beam
#                  downloads it from Maven Central into ~/.apache_beam/cache/jars once)
#   JOB_ENDPOINT   job server address for SUBMIT=jobserver (default: localhost:8099)
#   ENVIRONMENT    PROCESS (default): the TaskManager starts the SDK harness boot binary itself;
#                  DOCKER: the TaskManager starts WORKER_IMAGE per worker, which needs a docker
#                  CLI and socket inside the TaskManager (see README, "DOCKER environment")
#   WORKER_IMAGE   SDK image for ENVIRONMENT=DOCKER (default: dupmine-worker:2.77.0)
#   PARALLELISM    Flink parallelism         (default: 2)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"
DATA="${DATA:-${DUPMINE_FLINK_DATA:-/tmp/dupmine-flink}}"
SUBMIT="${SUBMIT:-uberjar}"
FLINK_MASTER="${FLINK_MASTER:-localhost:8081}"
FLINK_VERSION="${FLINK_VERSION:-2.2}"
FLINK_JOB_SERVER_JAR="${FLINK_JOB_SERVER_JAR:-}"
JOB_ENDPOINT="${JOB_ENDPOINT:-localhost:8099}"
ENVIRONMENT="${ENVIRONMENT:-PROCESS}"
WORKER_IMAGE="${WORKER_IMAGE:-dupmine-worker:2.77.0}"
PARALLELISM="${PARALLELISM:-2}"

case "${SUBMIT}" in
  uberjar)
    runner_args=(--runner=FlinkRunner "--flink_master=${FLINK_MASTER}" "--flink_version=${FLINK_VERSION}"
                 --flink_submit_uber_jar)
    if [[ -n "${FLINK_JOB_SERVER_JAR}" ]]; then
      runner_args+=("--flink_job_server_jar=${FLINK_JOB_SERVER_JAR}")
    fi
    ;;
  jobserver)
    runner_args=(--runner=PortableRunner "--job_endpoint=${JOB_ENDPOINT}")
    ;;
  *)
    echo "SUBMIT must be uberjar or jobserver, got '${SUBMIT}'" >&2
    exit 2
    ;;
esac

case "${ENVIRONMENT}" in
  PROCESS)
    # The boot binary of the Beam Python SDK image, present in the TaskManager (Dockerfile.taskmanager).
    environment_args=(--environment_type=PROCESS '--environment_config={"command": "/opt/apache/beam/boot"}')
    ;;
  DOCKER)
    environment_args=(--environment_type=DOCKER "--environment_config=${WORKER_IMAGE}")
    ;;
  *)
    echo "ENVIRONMENT must be PROCESS or DOCKER, got '${ENVIRONMENT}'" >&2
    exit 2
    ;;
esac

beam_args=("${runner_args[@]}" "${environment_args[@]}" "--parallelism=${PARALLELISM}")

mkdir -p "${DATA}"
cd "${REPO_ROOT}"
export NO_ALBUMENTATIONS_UPDATE=1

echo "== writing a synthetic dataset to ${DATA}/shards"
"${PYTHON}" deploy/flink/make_example_data.py "${DATA}/shards"

echo "== dupmine embed on Flink (${SUBMIT}, ${ENVIRONMENT})"
"${PYTHON}" -m pipelines.cli embed --input "${DATA}/shards" --output "${DATA}/embeddings" --model pixel \
  "${beam_args[@]}"

echo "== dupmine dedup on Flink"
"${PYTHON}" -m pipelines.cli dedup --embeddings "${DATA}/embeddings" --output "${DATA}/dedup" --threshold 0.9 \
  "${beam_args[@]}"

echo "== results"
cat "${DATA}/embeddings/stats.json"
echo
cat "${DATA}/dedup/summary.json"
echo
