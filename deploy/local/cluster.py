"""A local Beam cluster on one machine: separate SDK worker processes and an S3 object store on loopback.

What it starts (each a separate process, all on 127.0.0.1):

* ``moto_server``: an S3 API (range reads included) that every path of the
  run points at (``s3://BUCKET/...``), so driver and workers share no local
  path;
* Beam's local job service (``apache_beam.runners.portability.local_job_service_main``),
  which ``--runner PortableRunner`` submits to;
* an EXTERNAL SDK worker pool (``apache_beam.runners.worker.worker_pool_main``)
  that starts one SDK-harness process per worker the job service asks for.

Used by ``tests/pipelines/test_scale_out.py`` and by hand::

    python deploy/local/cluster.py start --dir /tmp/dupmine-cluster   # prints the env and Beam flags
    eval "$(python deploy/local/cluster.py env --dir /tmp/dupmine-cluster)"
    dupmine embed --input s3://data/shards/ --output s3://data/run/embed --model pixel $DUPMINE_BEAM_ARGS
    python deploy/local/cluster.py stop --dir /tmp/dupmine-cluster

The Dask engine (``--runner apache_beam.runners.dask.dask_runner.DaskRunner
--dask_client_address ADDR``) needs only a ``distributed.LocalCluster``; see
:func:`dask_cluster`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "dupmine-local", "AWS_SECRET_ACCESS_KEY": "dupmine-local",
               "AWS_DEFAULT_REGION": "us-east-1"}
STATE_FILE = "cluster.json"


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode} before listening on port {port}")
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not listen on port {port} within {timeout:.0f} s")


@dataclass
class LocalCluster:
    """Object store, job service and worker pool as child processes; a context manager.

    ``workdir`` holds their logs. ``env`` is what a driver (and anything else
    that reads the store) needs in its environment; ``beam_args`` are the
    flags that send a stage to the job service.
    """

    workdir: str
    s3: bool = True
    s3_port: int = field(default_factory=free_port)
    job_port: int = field(default_factory=free_port)
    pool_port: int = field(default_factory=free_port)
    procs: dict = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def env(self) -> dict:
        if not self.s3:
            return {}
        return dict(CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint)

    @property
    def beam_args(self) -> list[str]:
        return ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{self.job_port}",
                "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{self.pool_port}"]

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        env = dict(os.environ, **self.env)
        # Workers are started by the pool with this PATH: the venv's bin must be on it.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        _wait_for_port(port, self.procs[name], name)

    def start(self) -> "LocalCluster":
        os.makedirs(self.workdir, exist_ok=True)
        py = sys.executable
        try:
            if self.s3:
                self._spawn("s3", [os.path.join(os.path.dirname(py), "moto_server"), "-H", "127.0.0.1",
                                   "-p", str(self.s3_port)], self.s3_port)
            self._spawn("job_service", [py, "-m", "apache_beam.runners.portability.local_job_service_main",
                                        "--port", str(self.job_port)], self.job_port)
            self._spawn("worker_pool", [py, "-m", "apache_beam.runners.worker.worker_pool_main",
                                        "--service_port", str(self.pool_port)], self.pool_port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def make_bucket(self, name: str) -> None:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=self.endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).mkdir(name)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def dask_cluster(n_workers: int = 2):
    """A multi-process ``distributed.LocalCluster``; yields the Beam flags of its DaskRunner."""
    from distributed import Client, LocalCluster as DaskLocalCluster

    with DaskLocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
        yield ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner",
               "--dask_client_address", cluster.scheduler_address]


def _shell_env(state: dict) -> str:
    lines = [f"export {k}={v}" for k, v in state["env"].items()]
    lines.append("export DUPMINE_BEAM_ARGS='" + " ".join(state["beam_args"]) + "'")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "env", "stop"])
    parser.add_argument("--dir", required=True, help="folder for logs and the cluster's state file")
    parser.add_argument("--bucket", default="data", help="S3 bucket to create on start")
    args = parser.parse_args(argv)
    state_path = os.path.join(args.dir, STATE_FILE)
    if args.command == "start":
        cluster = LocalCluster(args.dir).start()
        cluster.make_bucket(args.bucket)
        state = {"pids": {k: p.pid for k, p in cluster.procs.items()}, "env": cluster.env,
                 "beam_args": cluster.beam_args}
        with open(state_path, "w", encoding="utf-8") as f:
            json.dump(state, f)
        cluster.procs.clear()  # keep them running after this command exits
        print(_shell_env(state))
        return 0
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    if args.command == "env":
        print(_shell_env(state))
        return 0
    for pid in state["pids"].values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    os.remove(state_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
