"""The dedup kernels under one name (kept for callers outside the stage, e.g. SIDE's k-means).

The code lives in modules named for what they do:

* :mod:`models.dedup.numerics` -- unit-row contract, float32 error bounds, argument checks;
* :mod:`models.dedup.partition` -- spherical k-means centroids, assignment with bounded spill;
* :mod:`models.dedup.search` -- exact pair search per partition and over a whole set;
* :mod:`models.dedup.components` -- connected components, in one process and distributed;
* :mod:`models.dedup.representatives` -- one kept image per group.
"""
from __future__ import annotations

from models.dedup.components import (apply_root_map, connected_components, local_components, merge_roots,
                                     resolve_roots, root_links)
from models.dedup.numerics import NORM_TOLERANCE, decision_band
from models.dedup.partition import DEFAULT_MAX_SPILL, assign_with_spill, train_centroids
from models.dedup.representatives import choose_representatives
from models.dedup.search import brute_force_pairs, cross_pairs, partition_pairs, search_partitioned

__all__ = [
    "NORM_TOLERANCE",
    "DEFAULT_MAX_SPILL",
    "decision_band",
    "train_centroids",
    "assign_with_spill",
    "partition_pairs",
    "cross_pairs",
    "brute_force_pairs",
    "search_partitioned",
    "connected_components",
    "local_components",
    "root_links",
    "resolve_roots",
    "apply_root_map",
    "merge_roots",
    "choose_representatives",
]
