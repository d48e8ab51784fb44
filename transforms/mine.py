"""The mine stage as one PTransform: analyse parts -> combine counts -> save counts -> tables -> manifest.

Steps (each a labelled composite, see the modules they come from):

1. ``AnalyzeParts`` (:mod:`transforms.mine_analyze`): calibrate the tagger,
   then per embedding part keywords, object tags, caption mentions -> counts.
2. ``CombineCounts``: the :class:`CountSource` strategy sums them per key
   (:class:`FromScratch`) or merges them with a previous run's counts and
   the changed rows' corrections (:class:`FromPrevious`;
   :mod:`transforms.mine_counts` explains why that is exact).
3. ``SaveCounts``: the whole combined counts, sharded, for the next increment.
4. ``SupportFilter`` + ``WriteTables`` (:mod:`transforms.mine_tables`): the tables computed per key
   (joins by group id and by keyword, combiners); only one row per tested keyword or pair meets in one place.
5. ``WriteCalibration`` and, after everything, ``WriteManifest``.
"""
from __future__ import annotations

import apache_beam as beam

from models.mine.plan import Increment, MineParams
from transforms.mine_analyze import AnalyzeParts
from transforms.mine_counts import CombineFromScratch, MergeWithPrevious, WriteCounts
from transforms.mine_tables import (
    SupportFilter,
    TableSettings,
    WriteCalibration,
    WriteManifest,
    WriteTables,
    manifest_entry,
)


class CountSource:
    """Where a run's combined counts come from (strategy): :class:`FromScratch` or :class:`FromPrevious`."""

    previous: str | None = None
    chain: tuple = ()
    frozen_calibration: dict | None = None

    def combine(self, params: MineParams) -> beam.PTransform:
        raise NotImplementedError


class FromScratch(CountSource):
    """A run over whole folders: this run's counts, summed."""

    def combine(self, params: MineParams) -> beam.PTransform:
        return CombineFromScratch()


class FromPrevious(CountSource):
    """An increment: this run's new parts merged with ``previous``'s saved counts and the changed rows."""

    def __init__(self, previous: str, increment: Increment):
        self.previous, self.increment = previous, increment

    @property
    def chain(self) -> tuple:
        return self.increment.chain

    @property
    def frozen_calibration(self) -> dict:
        return self.increment.calibration

    def combine(self, params: MineParams) -> beam.PTransform:
        return MergeWithPrevious(params, self.previous, self.increment.stats)


class Mine(beam.PTransform):
    """PBegin -> one element: the stage summary, emitted once ``manifest.json`` is written."""

    def __init__(self, params: MineParams, settings: TableSettings, source: CountSource):
        super().__init__()
        self.params, self.settings, self.source = params, settings, source

    def expand(self, pbegin):
        params, source = self.params, self.source
        analysed = (pbegin | "ListParts" >> beam.Create(list(range(len(params.parts))))
                    | "AnalyzeParts" >> AnalyzeParts(params, source.frozen_calibration))
        counts = analysed | "CombineCounts" >> source.combine(params)
        saved = counts | "SaveCounts" >> WriteCounts(params.output, params.count_shards)
        summary = (counts | "SupportFilter" >> SupportFilter(self.settings.word.min_support)
                   | "WriteTables" >> WriteTables(self.settings, len(params.parts)))
        calibration = analysed["calibration"] | "WriteCalibration" >> WriteCalibration(params.output)
        entry = manifest_entry(params, source.previous)
        return ({"summary": summary, "counts": saved, "calibration": calibration}
                | "WriteManifest" >> WriteManifest(params.output, tuple(source.chain), entry))
