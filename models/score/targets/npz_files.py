"""``.npz`` files of the closed-form targets and their ``gmm:`` / ``memorizer:`` specs."""
from __future__ import annotations

import io
from typing import Optional, Union

import numpy as np

from models.storage import layout
from models.score.targets.mixtures import GMMTarget, MemorizerTarget
from models.score.targets.schedule import VPSchedule


_SCHED_KEYS = ("T", "beta_start", "beta_end")
_GMM_KEYS = ("means", "sigmas", "weights") + _SCHED_KEYS
_MEM_KEYS = ("train", "multiplicities") + _SCHED_KEYS


def _schedule_arrays(schedule: Optional[VPSchedule]) -> dict:
    if schedule is None or schedule.linear_params is None:
        raise ValueError(
            "only targets with a VPSchedule.linear(...) schedule can be saved "
            f"(the file stores T, beta_start, beta_end); got {schedule!r}"
        )
    T, b0, b1 = schedule.linear_params
    return {"T": np.int64(T), "beta_start": np.float64(b0), "beta_end": np.float64(b1)}


def _read_npz(path: str, required: tuple, kind: str) -> dict:
    if not layout.exists(path):
        raise ValueError(f"{kind} target file not found: {path!r}")
    with np.load(io.BytesIO(layout.read_bytes(path)), allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{kind} file {path!r} is missing arrays {missing} (has {sorted(data)})")
    return data


def _schedule_from(data: dict) -> VPSchedule:
    return VPSchedule.linear(int(data["T"]), float(data["beta_start"]), float(data["beta_end"]))


def save_gmm(path: str, target: GMMTarget) -> None:
    """Write a GMMTarget as ``.npz`` with arrays:

    ``means`` (K, d) float64, ``sigmas`` (K,) standard deviations, ``weights`` (K,),
    and scalars ``T`` (int), ``beta_start``, ``beta_end`` (linear VP schedule).
    """
    if not isinstance(target, GMMTarget):
        raise ValueError(f"save_gmm needs a GMMTarget, got {type(target).__name__}")
    np.savez(path, means=target.means, sigmas=target.sigmas, weights=target.weights,
             **_schedule_arrays(target.schedule))


def save_memorizer(path: str, target: MemorizerTarget) -> None:
    """Write a MemorizerTarget as ``.npz`` with arrays:

    ``train`` (N, d) float64, ``multiplicities`` (N,), optional ``labels`` (N,) int64,
    and scalars ``T`` (int), ``beta_start``, ``beta_end`` (linear VP schedule).
    """
    if not isinstance(target, MemorizerTarget):
        raise ValueError(f"save_memorizer needs a MemorizerTarget, got {type(target).__name__}")
    extra = {} if target.labels is None else {"labels": target.labels}
    np.savez(path, train=target.train, multiplicities=target.multiplicities,
             **extra, **_schedule_arrays(target.schedule))


def save_target(path: str, target: Union[GMMTarget, MemorizerTarget]) -> str:
    """Save either target type; returns the matching :func:`load_target` spec string."""
    if isinstance(target, GMMTarget):
        save_gmm(path, target)
        return f"gmm:{path}"
    if isinstance(target, MemorizerTarget):
        save_memorizer(path, target)
        return f"memorizer:{path}"
    raise ValueError(f"cannot save target of type {type(target).__name__}")


def load_closed_form(spec: str) -> Union[GMMTarget, MemorizerTarget]:
    """Load ``"gmm:FILE"`` or ``"memorizer:FILE"`` (``.npz`` layouts on
    :func:`save_gmm` / :func:`save_memorizer`). Raises ValueError naming any
    missing arrays, or for an unknown kind."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"target spec must look like 'gmm:FILE' or 'memorizer:FILE', got {spec!r}")
    kind, path = spec.split(":", 1)
    kind = kind.strip().lower()
    if kind == "gmm":
        data = _read_npz(path, _GMM_KEYS, kind)
        return GMMTarget(data["means"], data["sigmas"], data["weights"], _schedule_from(data))
    if kind == "memorizer":
        data = _read_npz(path, _MEM_KEYS, kind)
        return MemorizerTarget(data["train"], data["multiplicities"], _schedule_from(data),
                               cond_labels=data.get("labels"))
    raise ValueError(f"unknown target kind {kind!r} in spec {spec!r}; expected 'gmm' or 'memorizer'")
