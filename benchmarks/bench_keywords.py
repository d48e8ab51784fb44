"""Benchmark: KeywordExtractor.extract_batch vs a plain ``nlp.pipe`` loop.

Both run in the same process on the same captions (the 10k real LAION
captions from ``../shared/data/laion_meta`` when present, else synthetic
ones) with the same pipeline (``spacy.blank("en")`` + lookup lemmatizer):

* baseline: ``for doc in nlp.pipe(captions): [t.lemma_ for t in doc]`` on the
  raw captions (tokenise + lemmatise, nothing else);
* extractor: normalisation + ``nlp.pipe`` + keyword rule + n-grams.

Usage::

    .venv/bin/python benchmarks/bench_keywords.py [--n 10000] [--repeat 3] [--batch-size 512]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.mine.keywords import KeywordConfig, KeywordExtractor  # noqa: E402


def load_captions(n: int) -> tuple[list[str | None], str]:
    """Up to ``n`` captions and a description of their source."""
    shared = Path(os.environ.get("DUPMINE_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()
    path = shared / "laion_meta" / "img2dataset_test_10000.parquet"
    if path.is_file():
        import pyarrow.parquet as pq

        caps = pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist()
        reps = -(-n // len(caps))
        return (caps * reps)[:n], f"LAION img2dataset_test_10000.parquet ({len(caps)} real captions)"
    rng = np.random.default_rng(0)
    words = ("astronaut riding horse moon painting starry night van gogh oil canvas print poster "
             "wall art vintage photo stock image royalty free vector illustration the of a and with on").split()
    caps = [" ".join(rng.choice(words, size=rng.integers(4, 16))) for _ in range(n)]
    return caps, "synthetic captions (shared LAION sample not found)"


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of captions")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args(argv)

    captions, source = load_captions(args.n)
    ex = KeywordExtractor(KeywordConfig(batch_size=args.batch_size))
    t0 = time.perf_counter()
    nlp = ex.load()
    load_s = time.perf_counter() - t0
    raw = [c if isinstance(c, str) else "" for c in captions]

    def baseline() -> None:
        for doc in nlp.pipe(raw, batch_size=args.batch_size):
            [t.lemma_ for t in doc]

    def extractor() -> None:
        ex.extract_batch(captions)

    def normalise_only() -> None:
        for c in captions:
            ex.normalize(c)

    extractor()  # warm caches (lexeme cache, string store)
    baseline()
    t_base = _best(baseline, args.repeat)
    t_ex = _best(extractor, args.repeat)
    t_norm = _best(normalise_only, args.repeat)
    kws, reasons = ex.extract_with_reasons(captions)
    n = len(captions)
    print(f"captions: {n} from {source}")
    print(f"pipeline load: {load_s:.2f} s ({nlp.pipe_names})")
    print(f"plain nlp.pipe + lemma_ : {n / t_base:10.0f} captions/s ({t_base:.3f} s)")
    print(f"KeywordExtractor        : {n / t_ex:10.0f} captions/s ({t_ex:.3f} s)")
    print(f"  of which normalisation: {n / t_norm:10.0f} captions/s ({t_norm:.3f} s)")
    print(f"ratio extractor/baseline throughput: {t_base / t_ex:.2f}")
    print(f"rejected: {sum(r is not None for r in reasons)}; mean keywords/caption: "
          f"{np.mean([len(k) for k in kws]):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
