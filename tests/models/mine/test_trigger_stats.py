"""Tests for models.mine.statistics, counting, word_triggers, object_triggers: exact tests vs scipy, BH vs a loop, planted triggers."""
from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest
from scipy import stats

from models.mine.counting import keyword_group_counts, keyword_object_counts
from models.mine.object_triggers import ObjectTriggerConfig, object_trigger_table
from models.mine.statistics import benjamini_hochberg, fisher_greater, hypergeom_sf_pvalue
from models.mine.word_triggers import WordTriggerConfig, word_trigger_table

# ---------------------------------------------------------------------------
# Exact tests
# ---------------------------------------------------------------------------


def _exact_tail(k: int, M: int, n: int, N: int) -> float:
    total = comb(M, N)
    return float(sum(Fraction(comb(n, x) * comb(M - n, N - x), total) for x in range(max(k, 0), min(n, N) + 1)))


def test_hypergeom_matches_scipy_and_exact_sums() -> None:
    rng = np.random.default_rng(0)
    M = rng.integers(1, 60, size=300)
    n = (rng.random(300) * (M + 1)).astype(int)
    N = (rng.random(300) * (M + 1)).astype(int)
    k = rng.integers(-2, 40, size=300)
    got = hypergeom_sf_pvalue(k, M, n, N)
    want = np.array([stats.hypergeom.sf(ki - 1, Mi, ni, Ni) for ki, Mi, ni, Ni in zip(k, M, n, N)])
    np.testing.assert_allclose(got, np.minimum(want, 1.0), rtol=1e-9, atol=1e-12)
    exact = np.array([_exact_tail(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(k, M, n, N)])
    np.testing.assert_allclose(got, exact, rtol=1e-8, atol=1e-14)
    assert got.shape == (300,)


def test_hypergeom_edges_and_errors() -> None:
    assert hypergeom_sf_pvalue(0, 10, 3, 4) == 1.0
    assert hypergeom_sf_pvalue(5, 10, 3, 4) == 0.0
    assert np.ndim(hypergeom_sf_pvalue(1, 10, 3, 4)) == 0
    # broadcasting
    assert hypergeom_sf_pvalue(np.arange(4)[:, None], 20, 5, np.arange(3)[None, :]).shape == (4, 3)
    # tiny tails stay accurate (no catastrophic cancellation): all 20 draws are successes
    tiny = hypergeom_sf_pvalue(20, 10_000, 20, 20)
    assert tiny == pytest.approx(1.0 / comb(10_000, 20), rel=1e-6)
    with pytest.raises(ValueError, match="n \\(successes\\) must be <= M"):
        hypergeom_sf_pvalue(1, 5, 6, 2)
    with pytest.raises(ValueError, match="N \\(draws\\) must be <= M"):
        hypergeom_sf_pvalue(1, 5, 2, 6)
    with pytest.raises(ValueError, match="non-negative"):
        hypergeom_sf_pvalue(1, -5, 2, 2)
    with pytest.raises(ValueError, match="integer"):
        hypergeom_sf_pvalue(1.5, 5, 2, 2)


def test_fisher_greater_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    tables = rng.integers(0, 25, size=(200, 4))
    tables[:5] = [[0, 0, 0, 0], [5, 0, 0, 0], [0, 3, 4, 0], [10, 1, 1, 300], [1, 1, 1, 1]]
    got = fisher_greater(*tables.T)
    want = [stats.fisher_exact([[a, b], [c, d]], alternative="greater")[1] for a, b, c, d in tables]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _bh_reference(p: list[float]) -> list[float]:
    """Textbook BH: loop over p sorted ascending, step-up min from the largest rank."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = min(running, 1.0)
    return q


def test_bh_matches_reference_with_ties() -> None:
    rng = np.random.default_rng(2)
    for trial in range(20):
        p = rng.choice([0.001, 0.01, 0.02, 0.04, 0.2, 0.5, 1.0], size=rng.integers(1, 40)).tolist()
        p += rng.random(trial).tolist()
        got = benjamini_hochberg(p)
        np.testing.assert_allclose(got, _bh_reference(p), rtol=1e-12)
        # ties get equal q, q is monotone in p, and q >= p
        arr = np.asarray(p)
        for v in np.unique(arr):
            assert np.ptp(got[arr == v]) == 0
        o = np.argsort(arr)
        assert np.all(np.diff(got[o]) >= -1e-15)
        assert np.all(got >= arr - 1e-15)


def test_bh_nan_family_size_and_errors() -> None:
    q = benjamini_hochberg([0.01, np.nan, 0.04, 0.03])
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], _bh_reference([0.01, 0.04, 0.03]))
    # extra untested hypotheses (p = 1) only change m
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.02], n_tests=4), _bh_reference([0.01, 0.02, 1.0, 1.0])[:2])
    assert benjamini_hochberg([]).shape == (0,)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        benjamini_hochberg([0.5, 1.5])
    with pytest.raises(ValueError, match="n_tests"):
        benjamini_hochberg([0.1, 0.2], n_tests=1)
    with pytest.raises(ValueError, match="1-D"):
        benjamini_hochberg([[0.1]])


# ---------------------------------------------------------------------------
# Synthetic corpus with planted triggers
# ---------------------------------------------------------------------------

N_ROWS = 4000


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    indices = np.fromiter((i for x in lists for i in x), dtype=np.int64, count=int(indptr[-1]))
    return indptr, indices


@pytest.fixture(scope="module")
def corpus() -> dict:
    """A 4,000-row corpus: background Zipf keywords, duplicate groups, planted triggers and decoys."""
    rng = np.random.default_rng(1234)
    n_bg = 500
    names = [f"bg{i}" for i in range(n_bg)]
    special = [
        "trigger_a", "trigger_b", "trigger_c", "trigger_d", "trigger_e",  # planted word triggers
        "download",  # decoy: concentrated in a huge placeholder group (low lift)
        "rare_dup",  # decoy: fully concentrated but support 8 < 10
        "spread_dup",  # decoy: 15 rows in one group but concentration 0.25
        "astronaut", "president",  # planted object triggers
        "beach", "portrait",  # object decoys: mentioned object / common object
    ]
    names += special
    kid = {n: i for i, n in enumerate(names)}
    zipf = 1.0 / np.arange(1, n_bg + 1) ** 1.1
    zipf /= zipf.sum()
    rows: list[set[int]] = [set(rng.choice(n_bg, size=rng.integers(3, 8), p=zipf).tolist()) for _ in range(N_ROWS)]

    # Duplicate groups: one placeholder group of 800 rows + 60 groups of 5..40 rows.
    row_group = np.full(N_ROWS, -1, dtype=np.int64)
    perm = rng.permutation(N_ROWS)
    placeholder = perm[:800]
    row_group[placeholder] = 999
    sizes = rng.integers(5, 41, size=60)
    sizes[:6] = [40, 30, 25, 20, 12, 20]
    groups: list[np.ndarray] = []
    pos = 800
    for g, s in enumerate(sizes):
        members = perm[pos : pos + s]
        row_group[members] = g
        groups.append(members)
        pos += s
    ungrouped = perm[pos:]

    def plant(word: str, in_group: np.ndarray, n_in: int, n_out: int) -> None:
        for r in rng.choice(in_group, size=n_in, replace=False):
            rows[r].add(kid[word])
        for r in rng.choice(ungrouped, size=n_out, replace=False):
            rows[r].add(kid[word])

    plant("trigger_a", groups[0], 36, 4)  # conc 0.9, lift 90
    plant("trigger_b", groups[1], 24, 6)  # conc 0.8
    plant("trigger_c", groups[2], 20, 10)  # conc 0.67
    plant("trigger_d", groups[3], 15, 5)  # conc 0.75
    plant("trigger_e", groups[4], 11, 3)  # conc 0.79, support 11
    plant("download", placeholder, 250, 150)  # conc 0.63, lift 3.1, p tiny
    plant("rare_dup", groups[5], 8, 0)  # support 8
    plant("spread_dup", groups[5], 15, 45)  # conc 0.25

    # Objects: 30 classes with base rates 1-30 %; "flag" rare, "person" common.
    n_obj = 30
    obj_names = [f"obj{i}" for i in range(n_obj)]
    obj_names[0], obj_names[1], obj_names[2], obj_names[3] = "flag", "podium", "sea", "person"
    base = rng.uniform(0.01, 0.3, size=n_obj)
    base[[0, 1, 2, 3]] = [0.02, 0.03, 0.08, 0.4]
    tags = [set(np.flatnonzero(rng.random(n_obj) < base).tolist()) for _ in range(N_ROWS)]
    # Background mention rate: captions name an object present in the image 50 % of the time.
    mentions = [set(o for o in t if rng.random() < 0.5) for t in tags]

    def plant_obj(word: str, n_rows: int, obj: int, p_tag: float, p_mention: float) -> None:
        chosen = rng.choice(ungrouped, size=n_rows, replace=False)
        for r in chosen:
            rows[r].add(kid[word])
            tags[r].discard(obj)
            mentions[r].discard(obj)
            if rng.random() < p_tag:
                tags[r].add(obj)
            if rng.random() < p_mention:
                mentions[r].add(obj)

    plant_obj("astronaut", 80, 0, 0.85, 0.03)  # astronaut -> flag
    plant_obj("president", 50, 1, 0.6, 0.05)  # president -> podium
    plant_obj("beach", 150, 2, 0.9, 0.6)  # decoy: sea is usually mentioned
    plant_obj("portrait", 100, 3, 0.8, 0.0)  # decoy: person is common (lift 2)

    kw_ptr, kw_idx = _csr([sorted(r) for r in rows])
    ob_ptr, ob_idx = _csr([sorted(t) for t in tags])
    me_ptr, me_idx = _csr([sorted(m) for m in mentions])
    return {
        "names": names,
        "obj_names": obj_names,
        "kw": (kw_ptr, kw_idx),
        "obj": (ob_ptr, ob_idx),
        "mention": (me_ptr, me_idx),
        "row_group": row_group,
        "rows": rows,
        "tags": tags,
        "mentions": mentions,
    }


def _word_table(corpus: dict, config: WordTriggerConfig | None = None):
    c = keyword_group_counts(*corpus["kw"], corpus["row_group"], len(corpus["names"]))
    return c, word_trigger_table(
        corpus["names"], c.n_w, c.pair_keyword, c.pair_group, c.pair_count,
        c.group_ids, c.group_sizes, c.n_total, n_in_groups=c.n_in_groups, config=config,
    )


def test_keyword_group_counts_match_loops(corpus: dict) -> None:
    c, _ = _word_table(corpus)
    rows, rg = corpus["rows"], corpus["row_group"]
    n_w = np.zeros(len(corpus["names"]), dtype=np.int64)
    pairs: dict[tuple[int, int], int] = {}
    for r, kws in enumerate(rows):
        for k in kws:
            n_w[k] += 1
            if rg[r] >= 0:
                pairs[(k, int(rg[r]))] = pairs.get((k, int(rg[r])), 0) + 1
    np.testing.assert_array_equal(c.n_w, n_w)
    got = {(int(k), int(g)): int(n) for k, g, n in zip(c.pair_keyword, c.pair_group, c.pair_count)}
    assert got == pairs
    assert c.n_total == N_ROWS and c.group_sizes.sum() == (rg >= 0).sum()
    np.testing.assert_array_equal(c.n_in_groups, np.bincount(c.pair_keyword, c.pair_count, len(n_w)))


def test_word_triggers_planted_flagged_decoys_not(corpus: dict) -> None:
    _, t = _word_table(corpus)
    d = t.to_pydict()
    flagged = {k for k, f in zip(d["keyword"], d["flagged"]) if f}
    assert flagged == {"trigger_a", "trigger_b", "trigger_c", "trigger_d", "trigger_e"}
    row = {k: i for i, k in enumerate(d["keyword"])}
    # decoys fail on the intended criterion
    dl = row["download"]
    assert d["q_value"][dl] < 1e-10 and d["lift"][dl] < 10
    assert d["n_top"][row["rare_dup"]] == 8 and d["top_group_share"][row["rare_dup"]] == 1.0
    assert d["top_group_share"][row["spread_dup"]] < 0.5
    # ranking by n_top * ln(lift): flagged first, trigger_a (36 rows, lift ~90) on top
    assert d["keyword"][0] == "trigger_a" and d["rank"][:5] == [1, 2, 3, 4, 5]
    assert sorted(d["rank"]) == list(range(1, len(d["rank"]) + 1))
    a = row["trigger_a"]
    assert d["n_top"][a] == 36 and d["n"][a] == 40 and d["top_group_size"][a] == 40
    assert d["lift"][a] == pytest.approx(36 * N_ROWS / (40 * 40))
    assert d["score"][a] == pytest.approx(36 * np.log(d["lift"][a]))
    assert set(t.column_names) >= {
        "keyword", "n", "n_in_groups", "top_group_id", "top_group_share", "lift",
        "p_value", "q_value", "flagged", "rank",
    }


def test_word_multiplicity_modes(corpus: dict) -> None:
    _, union = _word_table(corpus)
    _, none = _word_table(corpus, WordTriggerConfig(multiplicity="none"))
    _, touched = _word_table(corpus, WordTriggerConfig(multiplicity="touched"))
    key = lambda t: dict(zip(t.column("keyword").to_pylist(), t.column("p_value").to_pylist()))  # noqa: E731
    pu, pn, pt = key(union), key(none), key(touched)
    assert all(pu[k] >= pn[k] - 1e-300 for k in pu)
    assert all(pt[k] >= pn[k] - 1e-300 for k in pt)
    # a keyword sitting in exactly one group gets no "touched" correction but does get the union one
    assert pt["rare_dup"] == pn["rare_dup"] < pu["rare_dup"]
    # chunked evaluation of the union sum gives identical p-values
    _, chunked = _word_table(corpus, WordTriggerConfig(chunk_pairs=7))
    assert key(chunked) == pu


def test_word_table_edge_cases() -> None:
    t = word_trigger_table(["a", "b"], [3, 0], [], [], [], [], [], 10)
    d = t.to_pydict()
    assert d["top_group_id"] == [-1, -1] and d["p_value"] == [1.0, 1.0] and not any(d["flagged"])
    assert word_trigger_table([], [], [], [], [], [], [], 5).num_rows == 0


def test_union_pvalue_is_exact_sum_over_groups() -> None:
    sizes = np.array([3, 5, 5, 8, 12, 12, 12, 30])
    N = 200
    n_w = np.array([15])
    # keyword: 11 of its 15 rows in the group of size 30
    t = word_trigger_table(["w"], n_w, [0, 0], [7, 4], [11, 2], np.arange(8), sizes, N,
                           config=WordTriggerConfig(min_support=10))
    want = sum(stats.hypergeom.sf(10, N, s, 15) for s in sizes if s >= 11)
    assert t.column("p_value")[0].as_py() == pytest.approx(want, rel=1e-10)
    assert t.column("n_groups")[0].as_py() == 2 and t.column("top_group_id")[0].as_py() == 7


def test_word_null_calibration() -> None:
    """Random placement (no triggers): the union-corrected test flags nothing at FDR 0.05."""
    rng = np.random.default_rng(7)
    R, K = 3000, 400
    row_group = np.full(R, -1)
    perm = rng.permutation(R)
    pos = 0
    for g, s in enumerate(rng.integers(5, 40, size=60)):
        row_group[perm[pos : pos + s]] = g
        pos += s
    n_per_kw = rng.integers(3, 40, size=K)
    lists: list[list[int]] = [[] for _ in range(R)]
    for k, n in enumerate(n_per_kw):
        for r in rng.choice(R, size=n, replace=False):
            lists[r].append(k)
    c = keyword_group_counts(*_csr(lists), row_group, K)
    loose = dict(min_support=2, min_concentration=0.0, min_lift=1.0)
    t = word_trigger_table(None, c.n_w, c.pair_keyword, c.pair_group, c.pair_count,
                           c.group_ids, c.group_sizes, c.n_total, config=WordTriggerConfig(**loose))
    assert not any(t.column("flagged").to_pylist())
    assert np.nanmin(t.column("q_value").to_numpy()) > 0.05


def test_word_table_validation() -> None:
    base = dict(keywords=["a"], n_w=[5], pair_keyword=[0], pair_group=[3], pair_count=[4],
                group_ids=[3], group_sizes=[6], n_total=100)
    word_trigger_table(**base)
    with pytest.raises(ValueError, match="missing from group_ids"):
        word_trigger_table(**{**base, "pair_group": [4]})
    with pytest.raises(ValueError, match="exceeds the size"):
        word_trigger_table(**{**base, "group_sizes": [3]})
    with pytest.raises(ValueError, match="more than its n_w"):
        word_trigger_table(**{**base, "n_w": [3]})
    with pytest.raises(ValueError, match="equal length"):
        word_trigger_table(**{**base, "pair_count": [4, 1]})
    with pytest.raises(ValueError, match="unique"):
        word_trigger_table(**{**base, "pair_keyword": [0, 0], "pair_group": [3, 3], "pair_count": [1, 1]})
    with pytest.raises(ValueError, match="multiplicity must be one of"):
        WordTriggerConfig(multiplicity="bonferroni")
    with pytest.raises(ValueError, match="fdr must be in"):
        WordTriggerConfig(fdr=1.5)
    with pytest.raises(ValueError, match="min_support"):
        WordTriggerConfig(min_support=0)


def _object_table(corpus: dict, config: ObjectTriggerConfig | None = None):
    c = keyword_object_counts(*corpus["kw"], *corpus["obj"], *corpus["mention"],
                              len(corpus["names"]), len(corpus["obj_names"]))
    return c, object_trigger_table(
        corpus["names"], corpus["obj_names"], c.n_w, c.n_o, c.n_total,
        c.pair_keyword, c.pair_object, c.pair_count, c.pair_mentioned, config=config,
    )


def test_keyword_object_counts_match_loops(corpus: dict) -> None:
    c, _ = _object_table(corpus)
    co: dict[tuple[int, int], int] = {}
    me: dict[tuple[int, int], int] = {}
    for kws, tags, ments in zip(corpus["rows"], corpus["tags"], corpus["mentions"]):
        for k in kws:
            for o in tags:
                co[(k, o)] = co.get((k, o), 0) + 1
            for o in ments:
                me[(k, o)] = me.get((k, o), 0) + 1
    got = {(int(k), int(o)): int(n) for k, o, n in zip(c.pair_keyword, c.pair_object, c.pair_count)}
    assert got == co
    got_m = {(int(k), int(o)): int(n) for k, o, n in zip(c.pair_keyword, c.pair_object, c.pair_mentioned)}
    assert got_m == {key: me.get(key, 0) for key in co}
    np.testing.assert_array_equal(c.n_o, np.bincount([o for t in corpus["tags"] for o in t], minlength=30))


def test_object_triggers_planted_flagged_decoys_not(corpus: dict) -> None:
    _, t = _object_table(corpus)
    d = t.to_pydict()
    flagged = [(k, o) for k, o, f in zip(d["keyword"], d["object"], d["flagged"]) if f]
    assert set(flagged) == {("astronaut", "flag"), ("president", "podium")}
    assert (d["keyword"][0], d["object"][0]) == ("astronaut", "flag")
    assert d["rank"][0] == 1
    row = {(k, o): i for i, (k, o) in enumerate(zip(d["keyword"], d["object"]))}
    a = row[("astronaut", "flag")]
    assert d["p_o_given_w"][a] >= 0.7 and d["absent_fraction"][a] >= 0.9 and d["lift"][a] > 20
    beach = row[("beach", "sea")]
    assert d["q_value"][beach] < 1e-10 and d["absent_fraction"][beach] < 0.9  # fails only on "mentioned"
    portrait = row[("portrait", "person")]
    assert d["p_o_given_w"][portrait] > 0.6 and d["lift"][portrait] < 5  # fails only on lift
    # p-values are the one-sided Fisher test on the 2x2 table
    n, nw, no, nwo = N_ROWS, d["n_w"][a], d["n_o"][a], d["n_wo"][a]
    want = stats.fisher_exact([[nwo, nw - nwo], [no - nwo, n - nw - no + nwo]], alternative="greater")[1]
    assert d["p_value"][a] == pytest.approx(want, rel=1e-9)
    assert d["p_o_given_not_w"][a] == pytest.approx((no - nwo) / (n - nw))


def test_object_all_pairs_family_is_more_conservative(corpus: dict) -> None:
    c, t = _object_table(corpus)
    tested = int((c.n_w >= 10).sum())
    t_all = object_trigger_table(
        corpus["names"], corpus["obj_names"], c.n_w, c.n_o, c.n_total, c.pair_keyword, c.pair_object,
        c.pair_count, c.pair_mentioned, n_tests=tested * len(corpus["obj_names"]),
    )
    q1 = dict(zip(zip(t.column("keyword").to_pylist(), t.column("object").to_pylist()), t.column("q_value").to_pylist()))
    q2 = dict(zip(zip(t_all.column("keyword").to_pylist(), t_all.column("object").to_pylist()), t_all.column("q_value").to_pylist()))
    assert all(q2[k] >= q1[k] for k in q1 if q1[k] == q1[k])
    assert t_all.column("keyword")[0].as_py() == "astronaut"


def test_object_table_validation() -> None:
    base = dict(keywords=["w"], objects=["o"], n_w=[10], n_o=[5], n_total=100,
                pair_keyword=[0], pair_object=[0], pair_count=[4], pair_mentioned=[1])
    object_trigger_table(**base)
    with pytest.raises(ValueError, match="min\\(n_w, n_o\\)"):
        object_trigger_table(**{**base, "pair_count": [6]})
    with pytest.raises(ValueError, match="pair_mentioned must be <= n_w"):
        object_trigger_table(**{**base, "pair_mentioned": [11]})
    with pytest.raises(ValueError, match="2 names"):
        object_trigger_table(**{**base, "objects": ["o", "p"]})
    with pytest.raises(ValueError, match="min_absent"):
        ObjectTriggerConfig(min_absent=2.0)
    empty = object_trigger_table(None, None, [3], [2], 10, [], [], [], [])
    assert empty.num_rows == 0
