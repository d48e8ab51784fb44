"""Airflow DAG: incremental dupmine curation every night.

    plan -> embed -> dedup -> mine -> publish

Each task is a pod running ``deploy/schedule/curate.py STEP --run-id {{ ts_nodash }}``
in the dupmine worker image (``deploy/dataflow/Dockerfile.worker``):

* ``plan`` picks the shards img2dataset finished in ``DUPMINE_INCOMING`` since
  the last published round; with none, it exits 99 and the rest of the run is
  skipped;
* ``embed`` runs ``dupmine embed`` on them;
* ``dedup`` runs ``dupmine dedup --previous <last published round's dedup>``
  so new images are grouped with everything curated before;
* ``mine`` runs ``dupmine mine`` on the round's embeddings and groups;
* ``publish`` copies the drop list, flagged prompts, trigger tables, summaries
  and the HTML report to ``DUPMINE_ROOT/published/<run>`` and records the
  round in the ledger, so the next run starts after it.

The Beam jobs run where ``DUPMINE_BEAM_ARGS`` sends them (Dataflow in the
example ConfigMap); each pod waits for its job. All settings come from the
Kubernetes ConfigMap ``dupmine-curation`` (``k8s/cronjob.yaml`` defines it),
so this DAG and the CronJob share one configuration; the DAG itself reads:

    DUPMINE_IMAGE           worker image (default below; use the tag build.sh printed)
    DUPMINE_K8S_NAMESPACE   namespace of the pods              (default: dupmine)
    DUPMINE_K8S_SA          Kubernetes service account         (default: dupmine-curation)
    DUPMINE_CONFIGMAP       ConfigMap with the DUPMINE_* settings (default: dupmine-curation)
    DUPMINE_SCHEDULE        cron schedule                      (default: 0 3 * * *, UTC)

Needs Airflow 2.7+ (or 3.x) with apache-airflow-providers-cncf-kubernetes 7.0+.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG

IMAGE = os.environ.get("DUPMINE_IMAGE", "us-central1-docker.pkg.dev/my-gcp-project/dupmine/dupmine-worker:2.77.0")
NAMESPACE = os.environ.get("DUPMINE_K8S_NAMESPACE", "dupmine")
SERVICE_ACCOUNT = os.environ.get("DUPMINE_K8S_SA", "dupmine-curation")
CONFIGMAP = os.environ.get("DUPMINE_CONFIGMAP", "dupmine-curation")
SCHEDULE = os.environ.get("DUPMINE_SCHEDULE", "0 3 * * *")

CURATE = "/opt/dupmine/deploy/schedule/curate.py"
NO_NEW_SHARDS = 99  # curate.py plan --empty-exit-code: Airflow marks the task (and the run) skipped
STEPS = ("plan", "embed", "dedup", "mine", "publish")


def curation_step(step: str) -> KubernetesPodOperator:
    """One curate.py step as a pod; the driver in the pod submits the Beam job and waits for it."""
    arguments = [step, "--run-id", "{{ ts_nodash }}"]
    if step == "plan":
        arguments += ["--empty-exit-code", str(NO_NEW_SHARDS)]
    return KubernetesPodOperator(
        task_id=step,
        name=f"dupmine-{step}",
        namespace=NAMESPACE,
        image=IMAGE,
        cmds=["python", CURATE],
        arguments=arguments,
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=CONFIGMAP))],
        service_account_name=SERVICE_ACCOUNT,
        container_resources=k8s.V1ResourceRequirements(requests={"cpu": "1", "memory": "4Gi"},
                                                       limits={"memory": "8Gi"}),
        skip_on_exit_code=NO_NEW_SHARDS if step == "plan" else None,
        get_logs=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=600,
    )


with DAG(
    dag_id="dupmine_curation",
    description="new shards -> embed -> dedup --previous -> mine -> publish report and filter lists",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # each round builds on the previous one's published groups
    default_args={"retries": 1, "retry_delay": timedelta(minutes=15), "execution_timeout": timedelta(hours=24)},
    tags=["dupmine", "curation"],
) as dag:
    tasks = [curation_step(step) for step in STEPS]
    for upstream, downstream in zip(tasks, tasks[1:], strict=False):
        upstream >> downstream
