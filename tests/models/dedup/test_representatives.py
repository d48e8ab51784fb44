"""models.dedup.representatives: the representative rule.

Tolerances are stated at each assertion.
"""
from __future__ import annotations

import numpy as np
import pytest

from models.dedup import kernels as dedup



# --------------------------------------------------------------------------- representatives


def test_choose_representatives_rule():
    # group, width, height, key, expected
    table = [
        (0, 100, 100, "b", False),
        (0, 100, 100, "a", True),  # area tie with "b": smallest key wins
        (0, 50, 50, "0", False),  # smaller key but smaller area
        (5, 10, 20, "z", False),
        (5, 20, 10, "y", True),  # equal area 200: "y" < "z"
        (5, 5, 5, "a", False),
        (9, 1, 1, "only", True),  # singleton
        (3, 30, 10, "c", True),  # area 300 beats area 200 despite key
        (3, 20, 10, "a", False),
        (4, 8, 8, "k", True),  # identical rows: first wins
        (4, 8, 8, "k", False),
        (2, 10, 10, "B", True),  # code-point order: "B" < "a"
        (2, 10, 10, "a", False),
    ]
    g, w, h, k, expected = (np.array(col) for col in zip(*table))
    is_rep = dedup.choose_representatives(g, w, h, k)
    np.testing.assert_array_equal(is_rep, expected)
    assert is_rep.dtype == bool
    assert np.bincount(g[is_rep]).max() == 1  # exactly one per group
    with pytest.raises(ValueError, match="width and height"):
        dedup.choose_representatives(g, -w, h, k)
    with pytest.raises(ValueError, match="keys"):
        dedup.choose_representatives(g, w, h, k[:-1])


