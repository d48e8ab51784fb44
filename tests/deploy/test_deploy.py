"""Offline checks of deploy/: the Flex Template against the stages' flags, the images against setup.py,
the Flink and scheduling files, and that every stage's pipeline pickles for remote workers.

Nothing here needs Docker, gcloud, Java, a cluster or the network: shell scripts
run against a fake ``gcloud`` that records its arguments, and the pickling
check builds each stage's real graph (without running it) and unpickles every
function in a fresh interpreter that cannot import the tests.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import py_compile
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DATAFLOW = DEPLOY / "dataflow"
FLINK = DEPLOY / "flink"
SCHEDULE = DEPLOY / "schedule"
# deploy/*/ hold scripts, not packages: import their modules the way the scripts do.
for folder in (DATAFLOW, FLINK, SCHEDULE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import curate  # noqa: E402
import make_example_data  # noqa: E402
import make_metadata  # noqa: E402
import template_params  # noqa: E402

DOCKERFILES = {
    "launcher": DATAFLOW / "Dockerfile",
    "worker": DATAFLOW / "Dockerfile.worker",
    "worker-gpu": DATAFLOW / "Dockerfile.worker-gpu",
    "taskmanager": FLINK / "Dockerfile.taskmanager",
}


def setup_beam_version() -> str:
    """``BEAM_VERSION`` as assigned in setup.py (the one pin every image must use)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BEAM_VERSION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py assigns no BEAM_VERSION")


BEAM_VERSION = setup_beam_version()


def beam_option_names() -> set[str]:
    from apache_beam.options.pipeline_options import PipelineOptions

    return set(PipelineOptions([]).get_all_options())


def unknown_beam_options(args: list[str]) -> set[str]:
    """Options in ``args`` that no Beam PipelineOptions class declares (Beam would drop them)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return set(PipelineOptions(args).get_all_options(retain_unknown_options=True)) - beam_option_names()


# ---------------------------------------------------------------------------------------------
# Flex Template metadata <-> the stages' argparse flags
# ---------------------------------------------------------------------------------------------

TEMPLATE_STAGES = template_params.template_stages()


def load_metadata(stage: str) -> dict:
    return json.loads((DATAFLOW / "metadata" / f"{stage}.json").read_text())


def example_value(param: dict, action: argparse.Action) -> str:
    """A template value for one parameter: the argparse default where there is one, else a path."""
    if isinstance(action, argparse._StoreTrueAction):
        return "true"  # the non-default value, so the flag must come through
    if isinstance(action, argparse.BooleanOptionalAction):
        return "false" if action.default else "true"  # the --no- form must come through
    if action.choices is not None:
        return str(action.choices[-1])
    if action.default is not None:
        return template_params.template_value(action, action.default)
    if action.type in (int, float) or "regexes" in param:
        return "3"
    return f"gs://example-bucket/{param['name']}"


def typed(action: argparse.Action, value: str):
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return value == "true"
    return action.type(value) if action.type else value


def matches(param: dict, value: str) -> bool:
    return all(re.fullmatch(rx, value) for rx in param.get("regexes", []))


def test_committed_metadata_is_what_make_metadata_writes():
    stale = make_metadata.stale_files()
    assert not stale, (f"deploy/dataflow/metadata is stale ({', '.join(stale)}): "
                       f"run .venv/bin/python deploy/dataflow/make_metadata.py and commit the result")


def test_template_stages_are_the_pipeline_stages_with_flags():
    assert {"embed", "dedup", "mine"} <= set(TEMPLATE_STAGES)
    assert set(TEMPLATE_STAGES) | set(template_params.stages_without_flags()) == set(template_params.pipeline_stages())
    files = sorted(p.stem for p in (DATAFLOW / "metadata").glob("*.json"))
    assert files == sorted(TEMPLATE_STAGES)


@pytest.mark.parametrize("stage", TEMPLATE_STAGES)
def test_metadata_parameters_are_exactly_the_stage_flags(stage):
    meta = load_metadata(stage)
    params = {p["name"]: p for p in meta["parameters"]}
    assert len(params) == len(meta["parameters"]), "duplicate parameter names"
    assert meta["parameters"][0]["name"] == "stage" and params["stage"]["regexes"] == [f"^{stage}$"]
    assert params["stage"]["isOptional"] is False
    actions = {a.dest: a for a in template_params.stage_actions(stage)}
    assert set(params) - {"stage"} == set(actions), "metadata and argparse flags drifted"
    for dest, action in actions.items():
        p = params[dest]
        assert p["isOptional"] is (not action.required), dest
        assert p["label"] and p["helpText"], dest
        assert template_params._long_option(action) in p["helpText"], dest
        if action.choices is not None:
            assert all(matches(p, str(c)) for c in action.choices), dest
            assert not matches(p, "not-a-choice"), dest


@pytest.mark.parametrize("stage", TEMPLATE_STAGES)
def test_every_metadata_parameter_is_accepted_by_the_stage_parser(stage):
    """Synthetic launcher argv from the metadata -> launch.py translation -> the stage's own parser."""
    params = {p["name"]: p for p in load_metadata(stage)["parameters"] if p["name"] != "stage"}
    actions = {a.dest: a for a in template_params.stage_actions(stage)}
    values = {name: example_value(p, actions[name]) for name, p in params.items()}
    for name, value in values.items():
        assert matches(params[name], value), f"{name}={value!r} fails its own regexes {params[name].get('regexes')}"
        if actions[name].default is not None and not isinstance(actions[name], argparse._StoreTrueAction):
            default = template_params.template_value(actions[name], actions[name].default)
            assert matches(params[name], default), f"default {default!r} of {name} fails its regexes"
    beam = ["--runner=DataflowRunner", "--project=p", "--sdk_container_image=img:1"]
    launcher_argv = [f"--stage={stage}", *beam[:1], *(f"--{k}={v}" for k, v in values.items()), *beam[1:]]
    got_stage, rest = template_params.split_stage(launcher_argv)
    stage_argv = template_params.to_stage_argv(got_stage, rest)
    args, leftover = template_params.stage_parser(stage).parse_known_args(stage_argv)
    assert got_stage == stage
    assert leftover == beam, "Beam options must pass through untouched and in order"
    for name, value in values.items():
        assert getattr(args, name) == typed(actions[name], value), name


def test_parameter_regexes_reject_what_argparse_rejects():
    params = {p["name"]: p for p in load_metadata("embed")["parameters"]}
    for name, bad in [("batch_size", "0"), ("batch_size", "-3"), ("batch_size", "x"), ("device", "gpu"),
                      ("overwrite", "yes"), ("progress_seconds", "soon"), ("threads", "1.5")]:
        assert not matches(params[name], bad), f"{name}={bad!r} should fail the template's regexes"
    for name, good in [("progress_seconds", "1e-3"), ("progress_seconds", ".5"), ("threads", "-1")]:
        assert matches(params[name], good), f"{name}={good!r} should pass"
    dedup = {p["name"]: p for p in load_metadata("dedup")["parameters"]}
    assert matches(dedup["threshold"], "0.95") and not matches(dedup["threshold"], "0.9.5")


def test_to_stage_argv_rewrites_flags_and_keeps_beam_options():
    argv = ["--runner=DataflowRunner", "--batch_size=8", "--overwrite=false", "--max-pixels=99", "--input", "gs://b/x",
            "--experiments=a", "--output=gs://b/o"]
    assert template_params.to_stage_argv("embed", argv) == [
        "--batch-size=8", "--input=gs://b/x", "--output=gs://b/o", "--runner=DataflowRunner", "--max-pixels=99",
        "--experiments=a"]
    assert template_params.to_stage_argv("embed", ["--overwrite=TRUE"]) == ["--overwrite"]
    assert template_params.to_stage_argv("dedup", ["--increment_index=false"]) == ["--no-increment-index"]
    assert template_params.to_stage_argv("dedup", ["--increment_index=true"]) == ["--increment-index"]
    with pytest.raises(ValueError, match="--overwrite='maybe'"):
        template_params.to_stage_argv("embed", ["--overwrite=maybe"])
    with pytest.raises(SystemExit):  # argparse: a stage without a template
        template_params.split_stage(["--stage=download"])
    assert template_params.with_worker_image(["--a"], "img") == ["--a", "--sdk_container_image=img"]
    assert template_params.with_worker_image(["--sdk_container_image=gpu"], "img") == ["--sdk_container_image=gpu"]
    assert template_params.with_worker_image(["--a"], "") == ["--a"]


def test_stage_flags_cannot_capture_beam_options():
    """Template parameter names are not Beam options, and no Beam option is an argparse abbreviation of a stage flag."""
    beam = beam_option_names()
    assert "stage" not in beam
    for stage in TEMPLATE_STAGES:
        for action in template_params.stage_actions(stage):
            assert action.dest not in beam, f"{stage}: parameter {action.dest} is also a Beam option"
            for option in action.option_strings:
                prefixes = [b for b in beam if option.startswith(f"--{b}") and option != f"--{b}"]
                assert not prefixes, f"{stage}: argparse would read Beam's --{prefixes[0]} as {option}"


def test_unsupported_flag_types_stop_metadata_generation():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=lambda s: float(s) / 100)
    parser.add_argument("--paths", nargs="+")
    ratio, paths = parser._actions[1:]
    with pytest.raises(template_params.UnsupportedFlag, match="--ratio"):
        template_params.parameter(ratio, "dupmine x")
    with pytest.raises(template_params.UnsupportedFlag, match="--paths"):
        template_params.parameter(paths, "dupmine x")


def _recording_runner_class():
    from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState

    class SubmitRecorder(PipelineRunner):
        """A stand-in remote runner: records the job and returns it RUNNING, like a submitted Dataflow job."""

        jobs: list = []

        def run_pipeline(self, pipeline, options):
            SubmitRecorder.jobs.append((pipeline.to_runner_api(), options.get_all_options(retain_unknown_options=True)))
            return PipelineResult(PipelineState.RUNNING)

    return SubmitRecorder


def test_launcher_submits_the_stage_without_waiting(tmp_path, monkeypatch):
    common = pytest.importorskip("pipelines.common")
    if not hasattr(common, "PipelineSubmitted"):
        pytest.skip("needs the submit-only mode of pipelines/common.py (DUPMINE_SUBMIT_ONLY; deploy/dataflow/README.md)")
    import launch

    recorder = _recording_runner_class()
    monkeypatch.setattr(sys.modules[__name__], "SubmitRecorder", recorder, raising=False)
    monkeypatch.setenv(template_params.WORKER_IMAGE_ENV, "registry/dupmine-worker:t")
    # launch.main sets DUPMINE_SUBMIT_ONLY=1 in this process; setenv records it so teardown removes it again.
    monkeypatch.setenv(common.SUBMIT_ONLY_ENV, "0")
    shards = tmp_path / "shards"
    make_example_data.write_example_shards(str(shards), n_shards=1, n_unique=2)
    code = launch.main(["--stage=embed", f"--input={shards}", f"--output={tmp_path / 'emb'}", "--model=pixel",
                        "--batch_size=8", "--overwrite=true", f"--runner={__name__}.SubmitRecorder", "--project=p"])
    assert code == 0
    (proto, options), = recorder.jobs
    assert options["sdk_container_image"] == "registry/dupmine-worker:t" and options["project"] == "p"
    assert any("EmbedShards" in t.unique_name for t in proto.components.transforms.values())
    # The job was only submitted: the driver did not wait, so it did not read the job's stats.json.
    assert (tmp_path / "emb" / "config.json").exists() and not (tmp_path / "emb" / "stats.json").exists()
    assert json.loads((tmp_path / "emb" / "config.json").read_text())["config"]["batch_size"] == 8


# ---------------------------------------------------------------------------------------------
# Images: Beam pin, structure, build context
# ---------------------------------------------------------------------------------------------

def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs; comments dropped, continuation lines joined."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instruction, _, args = buf.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return out


def dockerfile_args(instructions) -> dict[str, str]:
    """ARG defaults (the first definition with a value wins)."""
    args = {}
    for instruction, text in instructions:
        if instruction == "ARG" and "=" in text:
            name, value = text.split("=", 1)
            args.setdefault(name, value.strip('"'))
    return args


def resolve(text: str, args: dict[str, str]) -> str:
    for _ in range(5):  # defaults may refer to earlier ARGs
        text = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)
    return text


def dockerfile_env(instructions) -> dict[str, str]:
    env = {}
    for instruction, text in instructions:
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(text)))
    return env


def test_images_pin_the_beam_version_of_setup_py():
    lock_beam = re.search(r"^apache-beam==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)
    assert lock_beam == BEAM_VERSION, "requirements.lock and setup.py pin different Beam versions"
    gcp = re.search(r"^apache-beam\[gcp\]==(\S+)$", (DATAFLOW / "requirements-gcp.lock").read_text(), re.M).group(1)
    assert gcp == BEAM_VERSION
    for name, path in DOCKERFILES.items():
        instructions = parse_dockerfile(path)
        args = dockerfile_args(instructions)
        assert args.get("BEAM_VERSION") == BEAM_VERSION, f"{path.name}: ARG BEAM_VERSION={args.get('BEAM_VERSION')}"
        froms = [resolve(text.split()[0], args) for instruction, text in instructions if instruction == "FROM"]
        for image in froms:
            if image.startswith("apache/beam_"):
                assert image == f"apache/beam_python3.11_sdk:{BEAM_VERSION}", f"{path.name}: {image}"
        if name.startswith("worker"):
            assert froms == [f"apache/beam_python3.11_sdk:{BEAM_VERSION}"]
        if name != "taskmanager":  # the images that install the pinned set assert the installed Beam at build time
            run = " ".join(text for instruction, text in instructions if instruction == "RUN")
            assert "apache_beam.__version__" in run and '"${BEAM_VERSION}"' in run, path.name


def test_launcher_image_is_a_flex_template_for_launch_py():
    instructions = parse_dockerfile(DOCKERFILES["launcher"])
    args = dockerfile_args(instructions)
    assert instructions[0][0] in ("ARG", "FROM") and any(i == "FROM" for i, _ in instructions)
    base = resolve(next(t for i, t in instructions if i == "FROM"), args)
    assert base.startswith("gcr.io/dataflow-templates-base/python311-template-launcher-base")
    env = dockerfile_env(instructions)
    workdir = next(t for i, t in instructions if i == "WORKDIR")
    assert env["FLEX_TEMPLATE_PYTHON_PY_FILE"] == f"{workdir}/deploy/dataflow/launch.py"
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == f"{workdir}/setup.py"
    assert env["DUPMINE_WORKER_IMAGE"] == "${WORKER_IMAGE}" and template_params.WORKER_IMAGE_ENV == "DUPMINE_WORKER_IMAGE"
    copied = [src for i, t in instructions if i == "COPY" for src in t.split()[:-1]]
    for needed in ("setup.py", "README.md", "requirements.lock", "deploy/dataflow/launch.py",
                   "deploy/dataflow/template_params.py", "pipelines", "transforms", "models"):
        assert needed in copied, f"launcher image does not copy {needed}"
    # The Python of the launcher (which pickles the DoFns) and of the workers (which unpickle them) must match.
    assert "python311" in base and all("python3.11" in parse_dockerfile(DOCKERFILES[w])[1][1]
                                       for w in ("worker", "worker-gpu"))


def dockerignore_allows(ignore: Path, source: str) -> bool:
    lines = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", f"{ignore.name} is an allowlist: '*' first"
    allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    return any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_structure_and_build_context(name):
    path = DOCKERFILES[name]
    instructions = parse_dockerfile(path)
    assert instructions[0][0] in ("ARG", "FROM"), f"{path.name}: must start with ARG or FROM"
    first_non_arg = next(i for i, _ in instructions if i != "ARG")
    assert first_non_arg == "FROM"
    known = {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "ENTRYPOINT", "CMD"}
    assert {i for i, _ in instructions} <= known
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.exists(), f"{ignore.name} keeps .venv and data out of the build context"
    for instruction, text in instructions:
        if instruction != "COPY" or text.startswith("--from="):
            continue
        for source in text.split()[:-1]:
            assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
            assert dockerignore_allows(ignore, source), f"{path.name}: {ignore.name} excludes {source}"
            assert dockerignore_allows(DATAFLOW / ".gcloudignore", source) or name == "taskmanager"
    if name.startswith("worker"):
        # The SDK harness boot binary must stay the entrypoint (Dataflow and Flink's DOCKER environment start it).
        assert not any(i in ("ENTRYPOINT", "CMD") for i, _ in instructions)
        copied = [src for i, t in instructions if i == "COPY" for src in t.split()[:-1]]
        assert "deploy/schedule/curate.py" in copied


def test_gpu_image_replaces_faiss_cpu_with_faiss_gpu_at_the_locked_version():
    lock = (REPO / "requirements.lock").read_text()
    faiss = re.search(r"^faiss-cpu==(\S+)$", lock, re.M)
    assert faiss, "requirements.lock must pin faiss-cpu for the GPU image's faiss-gpu pin"
    run = " ".join(t for i, t in parse_dockerfile(DOCKERFILES["worker-gpu"]) if i == "RUN")
    assert "grep -v '^faiss-cpu=='" in run and "s/^faiss-cpu==/faiss-gpu==/p" in run
    assert "--index-url" in run and "download.pytorch.org/whl/cpu" not in run
    cpu = " ".join(t for i, t in parse_dockerfile(DOCKERFILES["worker"]) if i == "RUN")
    assert "--no-deps --index-url" in cpu and dockerfile_args(parse_dockerfile(DOCKERFILES["worker"]))[
        "TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_gcp_lock_adds_only_packages_requirements_lock_does_not_pin():
    def pins(path):
        return {re.split(r"[\[=]", ln, maxsplit=1)[0].lower().replace("_", "-"): ln for ln in path.read_text().splitlines()
                if re.match(r"^[A-Za-z0-9]", ln)}

    base, extra = pins(REPO / "requirements.lock"), pins(DATAFLOW / "requirements-gcp.lock")
    assert set(extra) & set(base) == {"apache-beam"}, "requirements-gcp.lock repeats pins of requirements.lock"
    assert {"gcsfs", "google-cloud-storage", "google-apitools"} <= set(extra)
    assert all("==" in ln for ln in extra.values())


# ---------------------------------------------------------------------------------------------
# Scripts, YAML, Flink, schedule
# ---------------------------------------------------------------------------------------------

SHELL_SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shell_scripts_parse_and_are_strict(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if script.name != "env.sh":  # sourced by the others, which set the options
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_yaml_files_parse():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        assert [d for d in yaml.safe_load_all(path.read_text()) if d is not None], path


@pytest.fixture
def fake_gcloud(tmp_path):
    """A ``gcloud`` on PATH that records each call's arguments (JSON lines) and answers the project."""
    log = tmp_path / "gcloud.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        if sys.argv[1:3] == ["config", "get-value"]:
            print("fake-project")
        """))
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BUCKET": "bkt", "PROJECT": "proj",
           "REGION": "europe-west4", "TAG": "t1"}

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls


def flag_value(call: list[str], flag: str) -> str:
    return call[call.index(flag) + 1]


def gcloud_parameters(call: list[str]) -> dict[str, str]:
    value = flag_value(call, "--parameters")
    assert value.startswith("^~^")
    return dict(item.split("=", 1) for item in value[3:].split("~"))


def check_launch_parameters(stage: str, params: dict[str, str]) -> list[str]:
    """Template parameters match the metadata and reach the stage's parser; returns the Beam options left."""
    meta = {p["name"]: p for p in load_metadata(stage)["parameters"]}
    for name, value in params.items():
        if name in meta:
            assert matches(meta[name], value), f"{name}={value!r}"
    assert all(name in params for name, p in meta.items() if not p["isOptional"]), "a required parameter is missing"
    got, rest = template_params.split_stage([f"--{k}={v}" for k, v in params.items()])
    _, leftover = template_params.stage_parser(stage).parse_known_args(template_params.to_stage_argv(got, rest))
    assert not unknown_beam_options(leftover), f"unknown Beam options {unknown_beam_options(leftover)}"
    return leftover


def test_launch_sh_gpu_embed(fake_gcloud):
    env, calls = fake_gcloud
    subprocess.run([str(DATAFLOW / "launch.sh"), "embed", "num_workers=3"], env={**env, "GPU": "1"}, check=True,
                   capture_output=True)
    run, = [c for c in calls() if c[:3] == ["dataflow", "flex-template", "run"]]
    assert flag_value(run, "--template-file-gcs-location") == "gs://bkt/templates/dupmine-embed.json"
    assert flag_value(run, "--worker-machine-type") == "g2-standard-8"
    assert flag_value(run, "--additional-experiments") == "use_runner_v2"
    params = gcloud_parameters(run)
    assert params["stage"] == "embed" and params["device"] == "cuda" and params["num_workers"] == "3"
    assert params["input"] == "gs://bkt/laion/shards/{00000..00009}.tar"
    assert params["sdk_container_image"] == "europe-west4-docker.pkg.dev/proj/dupmine/dupmine-worker-gpu:t1"
    assert params["dataflow_service_options"] == \
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver;use_nvidia_mps"
    leftover = check_launch_parameters("embed", params)
    assert sorted(a.split("=")[0] for a in leftover) == ["--dataflow_service_options", "--num_workers",
                                                         "--sdk_container_image"]


def test_launch_sh_without_mps_and_cpu_stages(fake_gcloud):
    env, calls = fake_gcloud
    subprocess.run([str(DATAFLOW / "launch.sh"), "embed"], env={**env, "GPU": "1", "MPS": "0"}, check=True,
                   capture_output=True)
    subprocess.run([str(DATAFLOW / "launch.sh"), "mine", "min_support=20"], env=env, check=True, capture_output=True)
    gpu, mine = [c for c in calls() if c[:3] == ["dataflow", "flex-template", "run"]]
    assert flag_value(gpu, "--additional-experiments") == "use_runner_v2,no_use_multiple_sdk_containers"
    assert not gcloud_parameters(gpu)["dataflow_service_options"].endswith("use_nvidia_mps")
    params = gcloud_parameters(mine)
    assert params == {"stage": "mine", "embeddings": "gs://bkt/dupmine/embeddings", "groups": "gs://bkt/dupmine/dedup",
                      "output": "gs://bkt/dupmine/mine", "vocab": "gs://bkt/vocab/lvis_v1_categories.json",
                      "min_support": "20"}
    assert check_launch_parameters("mine", params) == []
    bad = subprocess.run([str(DATAFLOW / "launch.sh"), "download"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "no template for stage 'download'" in bad.stderr


def test_build_sh_builds_three_images_and_one_template_per_stage(fake_gcloud):
    env, calls = fake_gcloud
    out = subprocess.run([str(DATAFLOW / "build.sh")], env={**env, "PYTHON": sys.executable}, check=True,
                         capture_output=True, text=True)
    builds = [c for c in calls() if c[:2] == ["builds", "submit"]]
    subs = [dict(kv.split("=", 1) for kv in flag_value(c, "--substitutions")[3:].split("~")) for c in builds]
    registry = "europe-west4-docker.pkg.dev/proj/dupmine"
    assert [(s["_DOCKERFILE"], s["_IMAGE"]) for s in subs] == [
        ("deploy/dataflow/Dockerfile.worker", f"{registry}/dupmine-worker:t1"),
        ("deploy/dataflow/Dockerfile.worker-gpu", f"{registry}/dupmine-worker-gpu:t1"),
        ("deploy/dataflow/Dockerfile", f"{registry}/dupmine-launcher:t1")]
    assert all(s["_BEAM_VERSION"] == BEAM_VERSION and s["_WORKER_IMAGE"] == f"{registry}/dupmine-worker:t1" for s in subs)
    templates = [c for c in calls() if c[:3] == ["dataflow", "flex-template", "build"]]
    assert sorted(c[3] for c in templates) == sorted(f"gs://bkt/templates/dupmine-{s}.json" for s in TEMPLATE_STAGES)
    assert all(flag_value(c, "--image") == f"{registry}/dupmine-launcher:t1" for c in templates)
    assert "metadata up to date" in out.stdout
    cloudbuild = yaml.safe_load((DATAFLOW / "cloudbuild.yaml").read_text())
    assert set(subs[0]) == {k for k in cloudbuild["substitutions"]}
    assert cloudbuild["images"] == ["${_IMAGE}"]


def test_flink_versions_match_beam_and_each_other():
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    example = (FLINK / "run_example.sh").read_text()
    flink_major = re.search(r'FLINK_VERSION="\$\{FLINK_VERSION:-([0-9.]+)\}"', example).group(1)
    assert flink_major in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS, "Beam publishes no job server for this Flink"
    assert flink_major == FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS[-1], "pin the newest Flink Beam supports"
    compose = yaml.safe_load((FLINK / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"jobmanager", "taskmanager", "jobserver"}
    flink_image = dockerfile_args(parse_dockerfile(DOCKERFILES["taskmanager"]))["FLINK_IMAGE"]
    assert re.fullmatch(rf"flink:{re.escape(flink_major)}\.\d+-scala_2\.12-java\d+", flink_image)
    assert services["jobmanager"]["image"] == f"${{FLINK_IMAGE:-{flink_image}}}"
    assert services["taskmanager"]["build"]["args"]["FLINK_IMAGE"] == f"${{FLINK_IMAGE:-{flink_image}}}"
    assert services["jobserver"]["image"] == f"apache/beam_flink{flink_major}_job_server:{BEAM_VERSION}"
    assert services["taskmanager"]["build"]["args"]["BEAM_VERSION"] == BEAM_VERSION
    assert services["taskmanager"]["image"].endswith(f":{BEAM_VERSION}")
    assert "--flink-master=jobmanager:8081" in services["jobserver"]["command"]


def test_flink_compose_shares_artifacts_and_data_paths():
    compose = yaml.safe_load((FLINK / "docker-compose.yaml").read_text())
    services = compose["services"]
    staging = "beam-artifacts:/tmp/beam-artifact-staging"
    for name in ("taskmanager", "jobserver"):
        assert staging in services[name]["volumes"], f"{name} must share the artifact staging folder"
    assert "--artifacts-dir=/tmp/beam-artifact-staging" in services["jobserver"]["command"]
    for name, service in services.items():
        data = [v for v in service["volumes"] if "DUPMINE_FLINK_DATA" in v]
        assert len(data) == 1, name
        host, container = data[0].split("${DUPMINE_FLINK_DATA", 2)[1:]
        assert host == container.lstrip(":") or host.rstrip(":") == container, f"{name}: data must keep its path"
    assert (FLINK / services["taskmanager"]["build"]["dockerfile"]).exists()
    assert "8081:8081" in services["jobmanager"]["ports"] and "8099:8099" in services["jobserver"]["ports"]


def test_flink_example_uses_the_sdk_harness_of_the_worker_image():
    example = (FLINK / "run_example.sh").read_text()
    config = re.search(r"'--environment_config=(\{.*?\})'", example).group(1)
    assert json.loads(config) == {"command": "/opt/apache/beam/boot"}
    for flag in ("--runner=FlinkRunner", "--flink_submit_uber_jar", "--environment_type=PROCESS",
                 "--environment_type=DOCKER", "--flink_master=", "--flink_version=", "--flink_job_server_jar="):
        assert flag in example, flag
    runner_flags = ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--flink_version=2.2",
                    "--flink_submit_uber_jar", "--flink_job_server_jar=/x.jar", "--environment_type=PROCESS",
                    f"--environment_config={config}", "--parallelism=2", "--runner=PortableRunner",
                    "--job_endpoint=localhost:8099"]
    assert not unknown_beam_options(runner_flags)
    # The TaskManager image is the worker image, whose base provides /opt/apache/beam/boot.
    taskmanager = parse_dockerfile(DOCKERFILES["taskmanager"])
    args = dockerfile_args(taskmanager)
    assert resolve(args["WORKER_IMAGE"], args) == f"dupmine-worker:{BEAM_VERSION}"
    assert [resolve(t.split()[0], args) for i, t in taskmanager if i == "FROM"][-1] == f"dupmine-worker:{BEAM_VERSION}"


def test_flink_example_data(tmp_path):
    from models.storage.shards import list_shards

    paths = make_example_data.write_example_shards(str(tmp_path / "shards"), n_shards=2, n_unique=3)
    assert [Path(p).name for p in paths] == ["00000.tar", "00001.tar"]
    assert [Path(s.path).name for s in list_shards(str(tmp_path / "shards"))] == ["00000.tar", "00001.tar"]


def test_airflow_dag_compiles_and_loads_when_airflow_is_installed(tmp_path, monkeypatch):
    dag_file = SCHEDULE / "dupmine_curation_dag.py"
    py_compile.compile(str(dag_file), cfile=str(tmp_path / "dag.pyc"), doraise=True)
    tree = ast.parse(dag_file.read_text())
    steps = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "STEPS")
    assert steps == curate.STEPS
    assert "/opt/dupmine/deploy/schedule/curate.py" in dag_file.read_text()
    pytest.importorskip("airflow")
    pytest.importorskip("airflow.providers.cncf.kubernetes")
    try:  # Airflow 3
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2
        from airflow.models import DagBag

    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.import_errors
    dag = bag.dags["dupmine_curation"]
    assert [t.task_id for t in dag.topological_sort()] == list(curate.STEPS)
    assert dag.max_active_runs == 1
    plan = dag.get_task("plan")
    assert plan.cmds == ["python", "/opt/dupmine/deploy/schedule/curate.py"]
    assert plan.arguments[:3] == ["plan", "--run-id", "{{ ts_nodash }}"] and 99 in plan.skip_on_exit_code


def cronjob_documents() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((SCHEDULE / "k8s" / "cronjob.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def test_cronjob_runs_curate_in_the_worker_image():
    docs = cronjob_documents()
    assert set(docs) == {"Namespace", "ServiceAccount", "ConfigMap", "CronJob"}
    cron = docs["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    container, = pod["containers"]
    assert re.search(r"/dupmine-worker:[\w.\-]+$", container["image"])
    worker_copy = [t.split()[-1] for i, t in parse_dockerfile(DOCKERFILES["worker"]) if i == "COPY" and "curate.py" in t]
    workdir = next(t for i, t in parse_dockerfile(DOCKERFILES["worker"]) if i == "WORKDIR")
    assert container["command"] == ["python", f"{workdir}/{worker_copy[0]}", "all"]
    assert container["envFrom"] == [{"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}}]
    namespaces = {d["metadata"].get("namespace") for k, d in docs.items() if k != "Namespace"}
    assert namespaces == {docs["Namespace"]["metadata"]["name"]}


def test_cronjob_configuration_is_what_curate_reads_and_valid_for_the_stages():
    config = cronjob_documents()["ConfigMap"]["data"]
    read = set(re.findall(r'"(DUPMINE_[A-Z_]+)"', (SCHEDULE / "curate.py").read_text()))
    read |= {f"DUPMINE_{s.upper()}_ARGS" for s in ("embed", "dedup", "mine", "report")}
    assert set(config) <= read, f"ConfigMap keys curate.py ignores: {set(config) - read}"
    assert {"DUPMINE_ROOT", "DUPMINE_INCOMING", "DUPMINE_BEAM_ARGS"} <= set(config)
    beam_args = shlex.split(config["DUPMINE_BEAM_ARGS"])
    assert not unknown_beam_options(beam_args)
    plan = {"run_id": "r1", "shards": ["gs://b/in/00000.tar"], "previous": None, "embeddings": "gs://b/r1/emb",
            "dedup": "gs://b/r1/dedup", "mine": "gs://b/r1/mine", "published": "gs://b/published/r1"}
    from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions

    for stage in ("embed", "dedup", "mine"):
        command = curate.stage_command(stage, plan, shlex.split(config[f"DUPMINE_{stage.upper()}_ARGS"]), beam_args)
        _, leftover = template_params.stage_parser(stage).parse_known_args(command[1:])
        assert not unknown_beam_options(leftover), f"{stage}: {leftover}"
        image = PipelineOptions(leftover).view_as(WorkerOptions).sdk_container_image
        assert image.endswith("-gpu:2.77.0" if stage == "embed" else "/dupmine-worker:2.77.0"), (stage, image)
    from pipelines.report import build_parser

    _, leftover = build_parser().parse_known_args(shlex.split(config["DUPMINE_REPORT_ARGS"]))
    assert leftover == []


# ---------------------------------------------------------------------------------------------
# Scheduled curation: plan / publish rounds on local folders
# ---------------------------------------------------------------------------------------------

def add_shard(incoming: Path, name: str, complete: bool = True) -> str:
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / f"{name}.tar").write_bytes(b"")
    if complete:
        (incoming / f"{name}_stats.json").write_text("{}")
    return str(incoming / f"{name}.tar")


def fake_stage_outputs(plan: dict) -> None:
    """The files publish copies, as the stages would have written them."""
    for stage, inner in [("dedup", "summary.json"), ("embeddings", "stats.json"), ("mine", "summary.json")]:
        Path(plan[stage]).mkdir(parents=True, exist_ok=True)
        (Path(plan[stage]) / inner).write_text(json.dumps({"stage": stage}))
    drop = Path(plan["dedup"]) / "drop_keys.parquet"
    drop.mkdir()
    pq.write_table(pa.table({"key": ["k1", "k2"]}), drop / "part-00000.parquet")
    for name in ("flagged_prompts", "keyword_triggers", "object_triggers"):
        pq.write_table(pa.table({"keyword": ["w"]}), Path(plan["mine"]) / f"{name}.parquet")


def test_curation_rounds_pick_up_only_new_complete_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(curate, "has_report_command", lambda: False)
    root, incoming = tmp_path / "root", tmp_path / "incoming"
    a, b = add_shard(incoming, "00000"), add_shard(incoming, "00001")
    add_shard(incoming, "00002", complete=False)  # img2dataset still writing it
    plan1 = curate.plan_round(str(root), str(incoming), "r1")
    assert plan1["shards"] == [a, b] and plan1["previous"] is None
    assert curate.plan_round(str(root), str(incoming), "r1") == plan1, "a retried round reuses its plan"
    fake_stage_outputs(plan1)
    manifest = curate.publish_round(str(root), plan1)
    published = root / "published" / "r1"
    assert pq.read_table(published / "drop_keys.parquet").column("key").to_pylist() == ["k1", "k2"]
    assert sorted(manifest["files"]) == sorted(name for name, _, _ in curate.PUBLISHED)
    assert (root / "published" / "LATEST").read_text() == "r1\n"
    curate.publish_round(str(root), plan1)  # idempotent
    assert [r["run_id"] for r in curate.read_ledger(str(root))["runs"]] == ["r1"]

    (incoming / "00002_stats.json").write_text("{}")
    c = add_shard(incoming, "00003")
    plan2 = curate.plan_round(str(root), str(incoming), "r2")
    assert plan2["shards"] == [str(incoming / "00002.tar"), c]
    assert plan2["previous"] == {"run_id": "r1", "embeddings": plan1["embeddings"], "dedup": plan1["dedup"],
                                 "mine": plan1["mine"]}
    assert curate.plan_round(str(root), str(incoming), "r3", max_shards=1)["shards"] == [str(incoming / "00002.tar")]
    with pytest.raises(FileNotFoundError, match="did not finish"):
        curate.publish_round(str(root), plan2)  # nothing ran for r2 yet


def test_curation_stage_commands_parse_with_the_stages(tmp_path):
    plan = {"run_id": "r2", "shards": ["gs://b/in/00000.tar", "gs://b/in/00001.tar"],
            "previous": {"run_id": "r1", "embeddings": "gs://b/runs/r1/embeddings", "dedup": "gs://b/runs/r1/dedup",
                         "mine": "gs://b/runs/r1/mine"},
            "embeddings": "gs://b/runs/r2/embeddings", "dedup": "gs://b/runs/r2/dedup", "mine": "gs://b/runs/r2/mine",
            "published": "gs://b/published/r2"}
    beam = ["--runner=DataflowRunner", "--sdk_container_image=cpu"]
    embed = curate.stage_command("embed", plan, ["--device=cuda", "--sdk_container_image=gpu"], beam)
    args, leftover = template_params.stage_parser("embed").parse_known_args(embed[1:])
    assert args.input == "gs://b/in/00000.tar,gs://b/in/00001.tar" and args.device == "cuda"
    assert leftover == ["--runner=DataflowRunner", "--sdk_container_image=cpu", "--sdk_container_image=gpu"]
    from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions

    assert PipelineOptions(leftover).view_as(WorkerOptions).sdk_container_image == "gpu", "per-stage args must win"
    mine = curate.stage_command("mine", plan, [], beam)
    args, leftover = template_params.stage_parser("mine").parse_known_args(mine[1:])
    assert (args.embeddings, args.groups, args.output) == (plan["embeddings"], plan["dedup"], plan["mine"])
    assert args.previous == "gs://b/runs/r1/mine"  # counts merge with the previous round's
    dedup = curate.stage_command("dedup", plan, [], beam)
    assert dedup[dedup.index("--previous") + 1] == "gs://b/runs/r1/dedup"
    if curate.stage_has_flag("dedup", "--previous"):
        args, leftover = template_params.stage_parser("dedup").parse_known_args(dedup[1:])
        assert args.previous == "gs://b/runs/r1/dedup" and leftover == beam
        curate.check_incremental(plan)
    else:  # until dedup has --previous, an incremental round must stop before submitting anything
        with pytest.raises(RuntimeError, match="no --previous flag"):
            curate.check_incremental(plan)
    curate.check_incremental({**plan, "previous": None})
    report = curate.report_command(plan, "gs://b/published/r2/report", ["--max-groups=5"])
    from pipelines.report import build_parser

    assert build_parser().parse_args(report[1:]).mine == plan["mine"]


def test_curate_main_with_no_new_shards(tmp_path):
    root, incoming = tmp_path / "root", tmp_path / "incoming"
    incoming.mkdir()
    common = ["--root", str(root), "--incoming", str(incoming), "--run-id", "r1"]
    assert curate.main(["plan", *common, "--empty-exit-code", "99"]) == 99
    assert curate.main(["embed", *common]) == 0  # the plan is empty: every step is a no-op
    assert curate.main(["all", "--root", str(root), "--incoming", str(incoming)]) == 0
    with pytest.raises(SystemExit):
        curate.main(["embed", "--root", str(root), "--incoming", str(incoming)])  # single steps need --run-id


# ---------------------------------------------------------------------------------------------
# Remote pickling: every stage's real graph, built without running, unpickled in a fresh interpreter
# ---------------------------------------------------------------------------------------------

class _Built(Exception):
    """Carries the pipeline a stage's run() built (raised instead of running it)."""


def write_embedding_folder(root: Path, parts: int = 2, rows: int = 6, dim: int = 8) -> None:
    from models.storage import layout

    rng = np.random.default_rng(0)
    folder = layout.EmbeddingFolder(str(root))
    for p in range(parts):
        i = f"{p:05d}"
        x = rng.standard_normal((rows, dim))
        layout.write_npy(folder.img_emb(i), (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
        os.makedirs(os.path.dirname(folder.metadata(i)), exist_ok=True)
        keys = [f"{p:05d}{r:04d}" for r in range(rows)]
        pq.write_table(pa.table({"key": keys, "caption": [f"a photo {k}" for k in keys], "sha256": keys,
                                 "width": [64] * rows, "height": [64] * rows}), folder.metadata(i))
        layout.write_json(folder.marker(i), {})


def write_score_inputs(root: Path) -> dict[str, Path]:
    """A closed-form memorizer target (2 classes), one flagged prompt and one reference prompt."""
    from models.storage import layout
    from models.storage import schemas
    from models.score.targets.closed_form import MemorizerTarget, VPSchedule, save_memorizer

    root.mkdir(parents=True)
    x = np.random.default_rng(0).standard_normal((4, 8))
    target = root / "target.npz"
    save_memorizer(str(target), MemorizerTarget(x / np.linalg.norm(x, axis=1, keepdims=True), None,
                                                VPSchedule.linear(50), cond_labels=np.asarray([0, 0, 1, 1])))
    (root / "target.npz.prompts.json").write_text(json.dumps({"memorized prompt": 0, "generic prompt": 1}))
    flagged = [{"prompt": "memorized prompt", "kind": "duplicate-caption", "keyword": None, "object": None,
                "group_ids": ["G0"], "support": 2, "evidence": "{}", "rank": 1}]
    layout.write_parquet(str(root / "flagged.parquet"), schemas.table(flagged, schemas.FLAGGED_PROMPTS))
    (root / "reference.txt").write_text("generic prompt\n")
    return {"target": target, "flagged": root / "flagged.parquet", "reference": root / "reference.txt"}


# Tiny real inputs per pipeline stage: a new Beam stage must be added here to be checked.
def stage_argv(stage: str, data: dict[str, Path]) -> list[str]:
    out = data["out"] / stage
    return {
        "embed": ["--input", str(data["shards"]), "--output", str(out), "--model", "pixel"],
        "dedup": ["--embeddings", str(data["emb"]), "--output", str(out)],
        "mine": ["--embeddings", str(data["emb"]), "--output", str(out), "--tagger", "none"],
        "apply": ["--input", str(data["shards"]), "--drop", str(data["drop"]), "--output", str(out)],
        "score": ["--flagged", str(data["score"]["flagged"]), "--target", f"memorizer:{data['score']['target']}",
                  "--output", str(out), "--checks", "plaplace,wen", "--reference", str(data["score"]["reference"])],
    }[stage]


PICKLED_STAGES = ("embed", "dedup", "mine", "apply", "score")


def test_every_pipeline_stage_is_checked_for_pickling():
    missing = set(template_params.pipeline_stages()) - set(PICKLED_STAGES)
    assert not missing, f"add tiny inputs for {sorted(missing)} to stage_argv() in tests/deploy/test_deploy.py"


def walk(node):
    yield node
    for part in node.parts:
        yield from walk(part)


@pytest.fixture(scope="module")
def stage_graphs(tmp_path_factory):
    """``stage -> (pipeline, runner API proto)`` for each stage's real graph, built by its run() but not run."""
    import importlib

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    class CapturePipeline(beam.Pipeline):
        def run(self, test_runner_api="AUTO"):
            raise _Built(self)

    tmp = tmp_path_factory.mktemp("graphs")
    data = {"shards": tmp / "shards", "emb": tmp / "emb", "drop": tmp / "drop.txt", "out": tmp / "out"}
    make_example_data.write_example_shards(str(data["shards"]), n_shards=1, n_unique=2)
    write_embedding_folder(data["emb"])
    data["drop"].write_text("000000000\n")
    data["score"] = write_score_inputs(tmp / "score_inputs")
    graphs = {}
    for stage in PICKLED_STAGES:
        module = importlib.import_module(f"pipelines.{stage}")
        with pytest.raises(_Built) as built:
            module.run(stage_argv(stage, data), test_pipeline=CapturePipeline(options=PipelineOptions([])))
        pipeline = built.value.args[0]
        graphs[stage] = (pipeline, pipeline.to_runner_api())
    return graphs


def pickled_payloads(proto) -> list[tuple[str, str, bytes]]:
    """``(transform or component, urn, payload)`` for every pickled Python object in a pipeline proto."""
    from apache_beam.portability import common_urns, python_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    combines = {common_urns.composites.COMBINE_PER_KEY.urn, common_urns.composites.COMBINE_GLOBALLY.urn,
                common_urns.combine_components.COMBINE_PER_KEY_PRECOMBINE.urn,
                common_urns.combine_components.COMBINE_PER_KEY_MERGE_ACCUMULATORS.urn,
                common_urns.combine_components.COMBINE_PER_KEY_EXTRACT_OUTPUTS.urn,
                common_urns.combine_components.COMBINE_GROUPED_VALUES.urn}
    # Coders are Beam's own and travel wrapped (Pipeline.from_runner_api rebuilds them in the worker check).
    pickled = {python_urns.PICKLED_DOFN_INFO, python_urns.PICKLED_COMBINE_FN, python_urns.PICKLED_VIEWFN,
               python_urns.PICKLED_WINDOW_MAPPING_FN, python_urns.PICKLED_WINDOWFN, python_urns.PICKLED_TRANSFORM,
               python_urns.PICKLED_SOURCE}
    out = []

    def add(where, spec):
        if spec.urn in pickled:
            out.append((where, spec.urn, spec.payload))

    for tid, t in proto.components.transforms.items():
        label = t.unique_name or tid
        add(label, t.spec)
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            pardo = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
            add(label, pardo.do_fn)
            for name, side in pardo.side_inputs.items():
                add(f"{label}[{name}]", side.view_fn)
                add(f"{label}[{name}]", side.window_mapping_fn)
        elif t.spec.urn in combines:
            add(label, beam_runner_api_pb2.CombinePayload.FromString(t.spec.payload).combine_fn)
    for wid, w in proto.components.windowing_strategies.items():
        add(f"windowing {wid}", w.window_fn)
    return out


@pytest.mark.parametrize("stage", PICKLED_STAGES)
def test_stage_graph_pickles_transform_by_transform(stage, stage_graphs):
    from apache_beam.internal import pickler

    pipeline, proto = stage_graphs[stage]
    failures = []
    for node in walk(pipeline.transforms_stack[0]):
        if node.transform is None:
            continue
        try:
            pickler.loads(pickler.dumps(node.transform))
        except Exception as exc:  # noqa: BLE001  (report every unpicklable transform by its label)
            failures.append(f"{node.full_label} ({type(node.transform).__name__}): {exc!r}")
    assert not failures, "\n".join(failures)
    from apache_beam.portability import python_urns

    payloads = pickled_payloads(proto)
    assert any(urn == python_urns.PICKLED_DOFN_INFO for _, urn, _ in payloads), f"{stage}: no pickled DoFn in the graph"
    where, _, biggest = max(payloads, key=lambda p: len(p[2]))
    # A closure that captured a model, an index or a data array would show up here.
    assert len(biggest) < 1_000_000, f"{stage}: {where} pickles to {len(biggest)} bytes"


UNPICKLE_ON_A_WORKER = r"""
import importlib.abc, json, sys

class NotOnWorkers(importlib.abc.MetaPathFinder):
    # Workers have the dupmine packages (pipelines, transforms, models) and their dependencies, nothing else.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tests", "deploy", "benchmarks", "conftest", "pytest", "_pytest"}:
            raise ModuleNotFoundError(f"{name} is not installed on workers")
        return None

sys.meta_path.insert(0, NotOnWorkers())

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

report = {}
for path in sys.argv[1:]:
    stage = path.rsplit("/", 1)[-1].split(".")[0]
    proto = beam_runner_api_pb2.Pipeline.FromString(open(path, "rb").read())
    payloads = json.load(open(path + ".payloads.json"))
    errors, done = [], 0
    for where, urn, payload in payloads:
        try:
            pickler.loads(bytes.fromhex(payload))
            done += 1
        except Exception as exc:
            errors.append(f"{where} [{urn}]: {exc!r}")
    try:
        beam.Pipeline.from_runner_api(proto, FnApiRunner(), PipelineOptions([]))
    except Exception as exc:
        errors.append(f"Pipeline.from_runner_api: {exc!r}")
    report[stage] = {"unpickled": done, "errors": errors}
print(json.dumps(report))
"""


def test_stage_graphs_unpickle_in_a_fresh_worker_process(stage_graphs, tmp_path):
    files = []
    for stage, (_, proto) in stage_graphs.items():
        path = tmp_path / f"{stage}.pb"
        path.write_bytes(proto.SerializeToString())
        payloads = [[where, urn, payload.hex()] for where, urn, payload in pickled_payloads(proto)]
        (tmp_path / f"{stage}.pb.payloads.json").write_text(json.dumps(payloads))
        files.append(str(path))
    workdir = tmp_path / "worker"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", UNPICKLE_ON_A_WORKER, *files], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for stage in PICKLED_STAGES:
        assert not report[stage]["errors"], f"{stage}:\n" + "\n".join(report[stage]["errors"])
        assert report[stage]["unpickled"] == len(pickled_payloads(stage_graphs[stage][1]))
