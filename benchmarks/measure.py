"""Run a benchmark subprocess and measure it: wall time, peak RSS of its process tree, load average.

Shared by the benchmark scripts. Peak RSS comes from ``/usr/bin/time -v``
when present, else from ``getrusage(RUSAGE_CHILDREN)``, else from sampling
``/proc`` every 0.5 s (the sampler also enforces the memory and time limits).
"""
from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import threading
import time


def tree_rss_kib(pid: int) -> int:
    """Sum of VmRSS over ``pid`` and its descendants (Linux /proc)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def run_measured(cmd: list[str], log_path: str, cwd: str, mem_limit_gb: float, timeout: float) -> dict:
    """Run ``cmd`` (stdout+stderr to ``log_path``), killing its process group past the limits.

    Returns ``wall_s, rc, killed`` (the reason or None), ``peak_rss_mib``,
    ``sampled_peak_mib``, ``load_start``, ``load_max``.
    """
    tfile = log_path + ".time"
    use_time = os.path.exists("/usr/bin/time")
    if use_time:
        cmd = ["/usr/bin/time", "-v", "-o", tfile] + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    state = {"peak": 0, "killed": None, "loads": []}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)

        def watch():
            while proc.poll() is None:
                rss = tree_rss_kib(proc.pid)
                state["peak"] = max(state["peak"], rss)
                state["loads"].append(os.getloadavg()[0])
                elapsed = time.perf_counter() - t0
                reason = None
                if rss > mem_limit_gb * 1024 * 1024:
                    reason = f"killed: RSS {rss / 1024**2:.1f} GiB > --mem-limit-gb {mem_limit_gb}"
                elif elapsed > timeout:
                    reason = f"killed: wall {elapsed:.0f} s > --timeout {timeout}"
                if reason:
                    state["killed"] = reason
                    os.killpg(proc.pid, signal.SIGKILL)
                    return
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        rc = proc.wait()
        watcher.join()
    wall = time.perf_counter() - t0
    peak = None
    if use_time and os.path.exists(tfile):
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(tfile).read())
        if m:
            peak = int(m.group(1)) / 1024
    if peak is None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak = after / 1024 if after > before else state["peak"] / 1024
    return {"wall_s": wall, "rc": rc, "killed": state["killed"], "peak_rss_mib": peak,
            "sampled_peak_mib": state["peak"] / 1024, "load_start": load0,
            "load_max": max(state["loads"], default=load0)}
