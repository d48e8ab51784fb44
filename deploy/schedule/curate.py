"""Scheduled incremental curation: one round over the shards that arrived since the last one.

    python deploy/schedule/curate.py plan    --run-id RUN   # pick the new shards, write runs/RUN/plan.json
    python deploy/schedule/curate.py embed   --run-id RUN   # dupmine embed on the new shards
    python deploy/schedule/curate.py dedup   --run-id RUN   # dupmine dedup --previous <last published run>
    python deploy/schedule/curate.py mine    --run-id RUN   # dupmine mine --previous <last published run>
    python deploy/schedule/curate.py publish --run-id RUN   # report + filter lists -> published/RUN, ledger
    python deploy/schedule/curate.py all    [--run-id RUN]  # the five steps in order (the Kubernetes CronJob)

The Airflow DAG (``dupmine_curation_dag.py``) runs each step as its own pod;
the CronJob (``k8s/cronjob.yaml``) runs ``all``. Both use the dupmine worker
image (``deploy/dataflow/Dockerfile.worker``), which carries this file at
``/opt/dupmine/deploy/schedule/curate.py``, and drive Beam through the
``dupmine`` CLI, so the stages run wherever ``DUPMINE_BEAM_ARGS`` sends them
(``--runner=DataflowRunner ...``) and each step waits for its job.

Layout under ``--root`` (a local folder or an fsspec URL such as ``gs://bucket/dupmine``)::

    state/ledger.json          published rounds: run id, shards, output folders (the commit point)
    runs/RUN/plan.json         the round's shards and the published round it builds on
    runs/RUN/embeddings/       dupmine embed output
    runs/RUN/dedup/            dupmine dedup output (groups joined to the previous round's via --previous)
    runs/RUN/mine/             dupmine mine output
    published/RUN/             drop_keys.parquet, flagged_prompts.parquet, trigger tables, summaries,
                               report/ (when the image has ``dupmine report``), manifest.json
    published/LATEST           run id of the newest published round

A shard is new when it matches ``--shard-glob`` in ``--incoming``, is complete
(img2dataset writes ``NNNNN_stats.json`` after the shard; ``--require-stats``)
and is in no published round. A round is published only after all its steps
succeeded, so a failed round is planned again (same run id: its plan is
reused; a new run id: its shards are picked up again). Every step with an
empty plan does nothing and succeeds; ``plan --empty-exit-code 99`` lets a
scheduler mark the round skipped instead.

Every flag has an environment variable (``DUPMINE_ROOT``, ``DUPMINE_INCOMING``,
...; see ``--help``), which is how the ConfigMap of the CronJob and the DAG's
pods configure it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import subprocess
import sys

# Run from a checkout: the dupmine packages live two folders up (an installed dupmine wins).
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

log = logging.getLogger("dupmine.curate")

STEPS = ("plan", "embed", "dedup", "mine", "publish")

# Files a round publishes: (name under published/RUN, stage folder key in the plan, path inside it).
# Folders (drop_keys.parquet) are copied whole.
PUBLISHED = (
    ("drop_keys.parquet", "dedup", "drop_keys.parquet"),
    ("dedup_summary.json", "dedup", "summary.json"),
    ("embed_stats.json", "embeddings", "stats.json"),
    ("flagged_prompts.parquet", "mine", "flagged_prompts.parquet"),
    ("keyword_triggers.parquet", "mine", "keyword_triggers.parquet"),
    ("object_triggers.parquet", "mine", "object_triggers.parquet"),
    ("mine_summary.json", "mine", "summary.json"),
)


def _layout():
    from models.storage import layout

    return layout


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


def ledger_path(root: str) -> str:
    return _layout().join(root, "state", "ledger.json")


def run_dir(root: str, run_id: str) -> str:
    return _layout().join(root, "runs", run_id)


def plan_path(root: str, run_id: str) -> str:
    return _layout().join(run_dir(root, run_id), "plan.json")


def read_ledger(root: str) -> dict:
    """``{"runs": [...]}``: the published rounds, oldest first (empty before the first round)."""
    layout = _layout()
    path = ledger_path(root)
    return layout.read_json(path) if layout.exists(path) else {"runs": []}


def list_complete_shards(incoming: str, shard_glob: str, require_stats: bool) -> list[str]:
    """Shards in ``incoming`` matching ``shard_glob``, sorted; with ``require_stats`` only those img2dataset finished.

    Paths keep the URL scheme of ``incoming`` (``gs://...``), local paths stay plain.
    """
    from fsspec.implementations.local import LocalFileSystem

    fs, base = _fs(incoming)
    found = sorted(fs.glob(base.rstrip("/") + "/" + shard_glob))
    if require_stats:
        found = [p for p in found if fs.exists(p.rsplit(".", 1)[0] + "_stats.json")]
    return [p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p) for p in found]


def plan_round(root: str, incoming: str, run_id: str, shard_glob: str = "*.tar", require_stats: bool = True,
               max_shards: int = 0) -> dict:
    """Write (or reuse) ``runs/RUN/plan.json``: the new shards and the round this one builds on."""
    layout = _layout()
    path = plan_path(root, run_id)
    if layout.exists(path):
        log.info("reusing the plan of run %s", run_id)
        return layout.read_json(path)
    ledger = read_ledger(root)
    done = {shard for run in ledger["runs"] for shard in run["shards"]}
    new = [s for s in list_complete_shards(incoming, shard_glob, require_stats) if s not in done]
    if max_shards:
        new = new[:max_shards]
    last = ledger["runs"][-1] if ledger["runs"] else None
    base = run_dir(root, run_id)
    plan = {
        "run_id": run_id,
        "shards": new,
        "previous": None if last is None else {"run_id": last["run_id"], "embeddings": last["embeddings"],
                                               "dedup": last["dedup"], "mine": last.get("mine")},
        "embeddings": layout.join(base, "embeddings"),
        "dedup": layout.join(base, "dedup"),
        "mine": layout.join(base, "mine"),
        "published": layout.join(root, "published", run_id),
    }
    layout.write_json(path, plan)
    log.info("run %s: %d new shard(s)%s", run_id, len(new),
             f", building on run {last['run_id']}" if last else ", first round")
    return plan


def stage_command(step: str, plan: dict, stage_args: list[str], beam_args: list[str]) -> list[str]:
    """``dupmine`` arguments for ``step`` of ``plan``: stage inputs/outputs, then Beam args, then per-stage args.

    Per-stage arguments come last so they override the shared Beam arguments
    (``--sdk_container_image`` of the GPU image for embed, for example).
    """
    if step == "embed":
        io = ["--input", ",".join(plan["shards"]), "--output", plan["embeddings"]]
    elif step == "dedup":
        io = ["--embeddings", plan["embeddings"], "--output", plan["dedup"]]
        if plan["previous"]:
            io += ["--previous", plan["previous"]["dedup"]]
    elif step == "mine":
        io = ["--embeddings", plan["embeddings"], "--groups", plan["dedup"], "--output", plan["mine"]]
        if plan["previous"] and plan["previous"].get("mine"):
            io += ["--previous", plan["previous"]["mine"]]  # merge with the previous round's counts
    else:
        raise ValueError(f"step {step!r} does not run a dupmine stage; expected embed, dedup or mine")
    return [step, *io, *beam_args, *stage_args]


def report_command(plan: dict, output: str, report_args: list[str]) -> list[str]:
    """``dupmine report`` arguments for the round's outputs."""
    return ["report", "--embeddings", plan["embeddings"], "--dedup", plan["dedup"], "--mine", plan["mine"],
            "--output", output, *report_args]


def stage_has_flag(stage: str, flag: str) -> bool:
    """Whether ``dupmine STAGE`` in this image declares ``flag`` (in its module's ``add_arguments``)."""
    import importlib

    from pipelines.cli import SUBCOMMANDS

    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[stage][0]).add_arguments(parser)
    return flag in parser._option_string_actions


def check_incremental(plan: dict) -> None:
    """A round that builds on a previous one needs ``dupmine dedup --previous``; fail before any job otherwise.

    Without the flag the option would reach Beam as an unknown option and the
    round would silently deduplicate the new shards only against themselves.
    """
    if plan["previous"] and not stage_has_flag("dedup", "--previous"):
        raise RuntimeError(f"run {plan['run_id']} builds on run {plan['previous']['run_id']}, but this image's "
                           f"'dupmine dedup' has no --previous flag; update the image (incremental dedup needs it)")


def run_dupmine(argv: list[str]) -> None:
    """Run ``dupmine ARGV`` in a child process (one Beam job per process) and fail if it fails."""
    log.info("dupmine %s", shlex.join(argv))
    subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], check=True)


def copy_tree(src: str, dst: str) -> list[str]:
    """Copy the file or folder ``src`` to ``dst`` (same filesystem); return the files written."""
    fs, src_path = _fs(src)
    _, dst_path = _fs(dst)
    if not fs.exists(src_path):
        raise FileNotFoundError(f"{src} does not exist; the stage that writes it did not finish")
    if fs.isdir(src_path):
        pairs = [(f, dst_path.rstrip("/") + f[len(src_path.rstrip("/")):]) for f in fs.find(src_path)]
    else:
        pairs = [(src_path, dst_path)]
    for source, target in pairs:
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.copy(source, target)
    return [t for _, t in pairs]


def has_report_command() -> bool:
    """Whether this image's ``dupmine`` has the ``report`` subcommand."""
    from pipelines.cli import SUBCOMMANDS

    return "report" in SUBCOMMANDS


def publish_round(root: str, plan: dict, report_args: list[str] | None = None, render_report: bool = True) -> dict:
    """Copy the round's filter lists, tables and summaries (and report) to ``published/RUN``; commit the ledger.

    Idempotent: a round already in the ledger is not added twice.
    """
    layout = _layout()
    out = plan["published"]
    copied = {}
    for name, stage, inner in PUBLISHED:
        copied[name] = copy_tree(layout.join(plan[stage], inner), layout.join(out, name))
    if render_report and has_report_command():
        run_dupmine(report_command(plan, layout.join(out, "report"), report_args or []))
    elif render_report:
        log.info("this image's dupmine has no 'report' command; publishing tables and lists only")
    manifest = {"run_id": plan["run_id"], "shards": plan["shards"], "previous": plan["previous"],
                "files": sorted(copied), "published_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    layout.write_json(layout.join(out, "manifest.json"), manifest)
    ledger = read_ledger(root)
    if plan["run_id"] not in {r["run_id"] for r in ledger["runs"]}:
        ledger["runs"].append({key: plan[key] for key in ("run_id", "shards", "embeddings", "dedup", "mine", "published")})
        layout.write_json(ledger_path(root), ledger)
    layout.atomic_write_bytes(layout.join(root, "published", "LATEST"), (plan["run_id"] + "\n").encode())
    log.info("published run %s to %s", plan["run_id"], out)
    return manifest


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() not in ("0", "1", "true", "false"):
        raise ValueError(f"{name}={value!r}: expected 1/0 or true/false")
    return value.strip().lower() in ("1", "true")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="curate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=[*STEPS, "all"])
    parser.add_argument("--run-id", default=env("DUPMINE_RUN_ID"),
                        help="round id; required for single steps (Airflow: {{ ts_nodash }}); 'all' defaults to the UTC time")
    parser.add_argument("--root", default=env("DUPMINE_ROOT"), help="curation folder, local or fsspec URL ($DUPMINE_ROOT)")
    parser.add_argument("--incoming", default=env("DUPMINE_INCOMING"),
                        help="folder img2dataset writes new shards to ($DUPMINE_INCOMING)")
    parser.add_argument("--shard-glob", default=env("DUPMINE_SHARD_GLOB", "*.tar"),
                        help="shard file pattern in --incoming ($DUPMINE_SHARD_GLOB, default %(default)s)")
    parser.add_argument("--require-stats", action=argparse.BooleanOptionalAction,
                        default=_env_flag("DUPMINE_REQUIRE_STATS", True),
                        help="only shards whose NNNNN_stats.json exists ($DUPMINE_REQUIRE_STATS, default on)")
    parser.add_argument("--max-shards", type=int, default=int(env("DUPMINE_MAX_SHARDS", "0")),
                        help="at most this many new shards per round, oldest first; 0: all ($DUPMINE_MAX_SHARDS)")
    parser.add_argument("--beam-args", default=env("DUPMINE_BEAM_ARGS", ""),
                        help="Beam options for every stage, one shell-quoted string ($DUPMINE_BEAM_ARGS)")
    for stage in ("embed", "dedup", "mine", "report"):
        parser.add_argument(f"--{stage}-args", default=env(f"DUPMINE_{stage.upper()}_ARGS", ""),
                            help=f"extra dupmine {stage} flags, one shell-quoted string ($DUPMINE_{stage.upper()}_ARGS)")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=_env_flag("DUPMINE_REPORT", True),
                        help="render the HTML report into published/RUN/report ($DUPMINE_REPORT, default on)")
    parser.add_argument("--empty-exit-code", type=int, default=0,
                        help="exit code of 'plan' when there are no new shards (Airflow skips a task on 99)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("root", "incoming"):
        if not getattr(args, name):
            parser.error(f"--{name} (or $DUPMINE_{name.upper()}) is required")
    if args.step == "all" and not args.run_id:
        args.run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if not args.run_id:
        parser.error(f"--run-id is required for step {args.step!r}")
    beam_args = shlex.split(args.beam_args)
    steps = STEPS if args.step == "all" else (args.step,)
    if steps[0] == "plan":
        plan = plan_round(args.root, args.incoming, args.run_id, args.shard_glob, args.require_stats, args.max_shards)
    else:
        plan = _layout().read_json(plan_path(args.root, args.run_id))
    if not plan["shards"]:
        log.info("run %s has no new shards; nothing to do", args.run_id)
        return args.empty_exit_code if args.step == "plan" else 0
    if any(step in ("embed", "dedup") for step in steps):
        check_incremental(plan)
    for step in steps:
        if step in ("embed", "dedup", "mine"):
            run_dupmine(stage_command(step, plan, shlex.split(getattr(args, f"{step}_args")), beam_args))
        elif step == "publish":
            publish_round(args.root, plan, shlex.split(args.report_args), args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
