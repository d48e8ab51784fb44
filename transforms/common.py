"""Small pieces every stage's transforms share."""
from __future__ import annotations

from collections import Counter


class Held:
    """A weak-referenceable box for an object shared across a worker's threads.

    :class:`apache_beam.utils.shared.Shared` keeps what it hands out by weak
    reference, which plain tuples, dicts and many model objects do not allow.
    """

    def __init__(self, value):
        self.value = value


def sum_counters(parts) -> dict:
    """Combine per-part stats dicts (or Counters) by summing every field; ``{}`` for no parts."""
    total: Counter = Counter()
    for part in parts:
        total.update(part)
    return dict(total)
