"""The dedup run's summary and its commit: ``summary.json``, then ``manifest.json``.

:func:`commit_run` is the last step of the pipeline; it runs once every
output the manifest names is written (the transform makes it depend on all
write results), so a manifest always describes a complete run.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

from models.dedup.plan import DedupParams
from models.storage import layout, run_chain



class RunResults(NamedTuple):
    """What the pipeline hands the commit step (each a single value once every write is done).

    stats: summed counters of the write steps; sizes / retired: ``(group_size,
    count)`` pairs of the groups labelled / previous groups replaced;
    changed_parts: old parts given a ``changed/`` file; k: number of centroids.
    """

    stats: dict
    sizes: list
    retired: list
    changed_parts: list
    k: int


def _group_counts(rows: int, grouped: int, rejects: int, dropped: int, hist: dict) -> dict:
    hist = {int(s): int(c) for s, c in sorted(hist.items()) if int(c)}
    in_dups = sum(size * count for size, count in hist.items())
    return {
        "rows": rows,
        "rows_grouped": grouped,
        "rejects": rejects,
        "groups": grouped - in_dups + sum(hist.values()),
        "duplicate_groups": sum(hist.values()),
        "rows_in_duplicate_groups": in_dups,
        "rows_dropped": dropped,
        "duplicate_fraction": dropped / grouped if grouped else 0.0,
        "group_size_histogram": hist,
    }


def summarize(stats: dict, sizes: list, params: DedupParams, cfg, seconds: float | None, retired: list = (),
              previous: dict | None = None) -> dict:
    """summary.json: counts, group-size histogram, duplicate fraction, parameters, timing.

    The top-level counts describe the whole current state (for an increment:
    the previous state, less the previous groups that grew or merged, plus
    this run's rows and groups); ``increment`` describes this run alone
    (rows of its new parts, the old rows it changed, the groups it created or
    grew and their sizes, merges).
    """
    hist = {int(size): int(count) for size, count in sizes}
    inc = {"rows": stats.get("rows", 0), "rows_grouped": stats.get("grouped_rows", 0), "rejects": stats.get("rejects", 0),
           "rows_dropped": stats.get("dropped", 0), "rows_changed": stats.get("changed_rows", 0),
           "rows_demoted": stats.get("demoted", 0), "merged_groups": stats.get("merged_groups", 0),
           "duplicate_groups_created_or_grown": sum(hist.values()), "group_size_histogram": dict(sorted(hist.items())),
           "new_parts": len(params.parts) - params.n_old, "old_parts": params.n_old,
           "near_pairs": stats.get("near_pairs", 0), "near_edges_written": stats.get("near_edges_written", 0),
           "partitions_split": stats.get("partitions_split", 0),
           "component_residual_links": stats.get("component_residual_links", 0)}
    if previous is None:
        state = _group_counts(inc["rows"], inc["rows_grouped"], inc["rejects"], inc["rows_dropped"], hist)
    else:
        total = {int(s): int(c) for s, c in previous["group_size_histogram"].items()}
        for size, count in retired:
            total[int(size)] = total.get(int(size), 0) - int(count)
        for size, count in hist.items():
            total[size] = total.get(size, 0) + count
        if any(c < 0 for c in total.values()):
            raise ValueError(f"group-size histogram went negative ({total}); the previous summary does not match its groups")
        state = _group_counts(previous["rows"] + inc["rows"], previous["rows_grouped"] + inc["rows_grouped"],
                              previous["rejects"] + inc["rejects"], previous["rows_dropped"] + inc["rows_dropped"], total)
    return state | {
        "increment": inc,
        "previous": cfg.previous,
        "parameters": asdict(cfg) | {"resolved_partitions": params.k, "resolved_sample_size": params.sample_size,
                                     "resolved_vectors": params.vectors.value, "dim": params.dim,
                                     "parts": len(params.parts)},
        "seconds": None if seconds is None else round(seconds, 3),
    }


def chain_entry(params: DedupParams, cfg, k: int, changed_parts: list) -> run_chain.ChainEntry:
    """This run's entry of the run chain: the parts it introduced (row counts, content identities) and the
    slots of the old parts it changed."""
    folder = layout.EmbeddingFolder(cfg.embeddings)
    rows = [int(layout.read_npy(folder.img_emb(part)).shape[0]) for part in params.new_parts]
    order = {params.slot(i): i for i in range(params.n_old)}
    return run_chain.ChainEntry(
        run=run_chain.normalize_path(cfg.output), embeddings=run_chain.normalize_path(cfg.embeddings),
        parts=tuple(params.new_parts), rows=tuple(rows), threshold=cfg.threshold, seed=cfg.seed,
        max_spill=cfg.max_spill, k=int(k), dim=params.dim,
        changed_parts=tuple(sorted(changed_parts, key=order.__getitem__)),
        previous=run_chain.normalize_path(cfg.previous) if cfg.previous else None,
        contents=tuple(run_chain.part_identity(cfg.embeddings, part) for part in params.new_parts),
        index_buckets=params.index_buckets if params.write_index else 0)


def commit_run(results: RunResults, params: DedupParams, cfg, previous_summary: dict | None,
               chain: list[dict]) -> dict:
    """Write ``summary.json``, then ``manifest.json`` (the commit point); returns the summary.

    Runs on one worker as the pipeline's last step, so a submitted-and-not-awaited
    job still leaves a manifest the next increment can build on.
    """
    summary = summarize(results.stats, results.sizes, params, cfg, None, results.retired, previous_summary)
    layout.write_json(params.out.summary, summary)
    entry = chain_entry(params, cfg, results.k, results.changed_parts)
    run_chain.write_manifest(cfg.output, [run_chain.ChainEntry.from_json(e) for e in chain] + [entry])
    return summary
