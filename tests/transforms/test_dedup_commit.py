"""The commit point: ``manifest.json`` is written by a step that depends on every write of the run."""
from __future__ import annotations

import apache_beam as beam

from pipelines import dedup
from tests.pipelines.test_dedup_pipeline import planted_folder


class _Upstream(beam.pipeline.PipelineVisitor):
    """Collect every applied transform (full label) and its direct producer transforms, main and side inputs."""

    def __init__(self):
        self.producers: dict[str, set[str]] = {}

    def visit_transform(self, node):
        inputs = list(node.main_inputs.values()) + [s.pvalue for s in node.side_inputs]
        self.producers[node.full_label] = {pc.producer.full_label for pc in inputs if pc.producer is not None}


def _ancestors(producers: dict, label: str) -> set[str]:
    seen, todo = set(), [label]
    while todo:
        for up in producers.get(todo.pop(), ()):
            if up not in seen:
                seen.add(up)
                todo.append(up)
    return seen


def test_manifest_waits_for_every_write(tmp_path):
    planted_folder(tmp_path / "emb", n_parts=2, rows_per_part=50)
    cfg = dedup.DedupConfig(embeddings=str(tmp_path / "emb"), output=str(tmp_path / "dd"))
    p = beam.Pipeline()
    dedup.build(p, cfg)
    visitor = _Upstream()
    p.visit(visitor)
    commit = next(label for label in visitor.producers if label.endswith("WriteSummaryAndManifest"))
    upstream = {step for label in _ancestors(visitor.producers, commit) for step in label.split("/")}
    writes = {"WriteEdges", "ExactGroups", "WritePartFiles", "WriteMerges", "WriteCentroids", "WriteNNHistogram"}
    assert writes <= upstream, sorted(writes - upstream)
