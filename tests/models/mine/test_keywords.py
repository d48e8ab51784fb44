"""Tests for models.mine.captions, keywords, vocab and mentions: normalisation, n-gram keywords, vocabularies."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from models.mine.captions import (
    REJECT_EMPTY,
    REJECT_EMPTY_AFTER_NORMALISATION,
    REJECT_NO_KEYWORDS,
    normalize_caption,
    normalize_caption_with_reason,
)
from models.mine.keywords import KeywordConfig, KeywordExtractor
from models.mine.mentions import VocabMatcher, mentions
from models.mine.vocab import VocabEntry, load_vocab, normalize_vocab_name, parse_vocab_lines

# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Tom &amp;amp; Jerry", "tom & jerry"),  # double-escaped entity
        ("Tom &amp; Jerry &quot;Classic&quot;", 'tom & jerry "classic"'),
        ("<b>Bold</b> <a href='x'>Link</a><br/>text", "bold link text"),
        ("&lt;i&gt;escaped tag&lt;/i&gt; stays out", "escaped tag stays out"),
        ("I <3 cats, 2 < 3 > 1", "i <3 cats, 2 < 3 > 1"),
        ("Sunset IMG_1234.JPG over the sea .png", "sunset over the sea"),
        ("photo DSC01234 of a cat", "photo of a cat"),
        ("see https://example.com/a?b=1 and www.foo.org/x or shop.example.co.uk now", "see and or now"),
        ("ＦＵＬＬＷＩＤＴＨ ｆｉ ligature", "fullwidth fi ligature"),
        ("tabs\tand\n\nnewlines   and\u200bzero\u00a0width", "tabs and newlines andzero width"),
        ("Cat 🐱 with emoji 🚀", "cat 🐱 with emoji 🚀"),
        ("東京タワーの夜景", "東京タワーの夜景"),
        ("Москва Кремль", "москва кремль"),
        ("مرحبا بالعالم", "مرحبا بالعالم"),
    ],
)
def test_normalize_messy_captions(raw: str, want: str) -> None:
    text, reason = normalize_caption_with_reason(raw)
    assert reason is None
    assert text == want
    assert normalize_caption(raw) == want


@pytest.mark.parametrize("raw", [None, "", "   ", "\n\t", float("nan")])
def test_normalize_rejects_empty(raw: object) -> None:
    assert normalize_caption_with_reason(raw) == (None, REJECT_EMPTY)
    assert normalize_caption(raw) is None


def test_normalize_other_rejections() -> None:
    assert normalize_caption_with_reason("<br><p></p>") == (None, REJECT_EMPTY_AFTER_NORMALISATION)
    assert normalize_caption_with_reason("https://x.com/img.jpg") == (None, REJECT_EMPTY_AFTER_NORMALISATION)
    text, reason = normalize_caption_with_reason(12345)
    assert text is None and reason == "not a string: int"
    assert normalize_caption(b"Caf\xc3\xa9 Bytes") == "café bytes"
    assert normalize_caption("Keep Case", lowercase=False) == "Keep Case"
    with pytest.raises(ValueError, match="max_chars"):
        normalize_caption("x", max_chars=0)


def test_normalize_long_caption_truncated_at_word_boundary() -> None:
    words = [f"word{i}" for i in range(2000)]
    raw = " ".join(words)
    assert len(raw) > 10_000
    text = normalize_caption(raw)
    assert text is not None and len(text) <= 2000
    assert text.split()[-1] in words  # ends on a whole word
    assert raw.lower().startswith(text)
    # one enormous unsegmented "word" (e.g. CJK) is hard-cut
    cjk = "猫" * 10_000
    assert normalize_caption(cjk) == "猫" * 2000
    assert normalize_caption(raw, max_chars=50) == "word0 word1 word2 word3 word4 word5 word6 word7"


# ---------------------------------------------------------------------------
# Keyword extraction
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor() -> KeywordExtractor:
    ex = KeywordExtractor(KeywordConfig())
    ex.load()
    return ex


def test_lemmatizer_really_lemmatises(extractor: KeywordExtractor) -> None:
    kws = extractor.extract("Astronauts painting paintings of geese and mice; children running")
    for lemma in ("astronaut", "painting", "goose", "mouse", "child", "run"):
        assert lemma in kws
    for surface in ("astronauts", "paintings", "geese", "mice", "children", "running"):
        assert surface not in kws


def test_ngram_rule_on_real_sentences(extractor: KeywordExtractor) -> None:
    kws = extractor.extract("The Starry Night by Van Gogh")
    assert kws == ["starry", "night", "van", "gogh", "starry night", "van gogh"]
    assert "night van" not in kws
    # trigrams over a run; numbers and punctuation break runs; no duplicates
    kws = extractor.extract("Vintage oil painting, 1889. Vintage oil painting!")
    assert kws == ["vintage", "oil", "paint", "vintage oil", "oil paint", "vintage oil paint"]
    # intra-word hyphens join; single characters are dropped and break the run
    assert extractor.extract("Spider-Man T-shirt") == ["spider", "man", "shirt", "spider man"]
    assert extractor.extract("Spider-Man costume") == ["spider", "man", "costume", "spider man", "man costume",
                                                       "spider man costume"]
    kws = extractor.extract("Mothers influence on her young hippo")
    assert kws == ["mother", "influence", "young", "hippo", "mother influence", "young hippo"]


def test_max_ngram_and_min_len_config() -> None:
    ex = KeywordExtractor(KeywordConfig(max_ngram=1, min_token_len=4))
    assert ex.extract("big red astronaut rides a horse") == ["astronaut", "ride", "horse"]
    with pytest.raises(ValueError, match="max_ngram"):
        KeywordConfig(max_ngram=0)
    with pytest.raises(ValueError, match="batch_size"):
        KeywordConfig(batch_size=0)


def test_extract_batch_reasons_and_scripts(extractor: KeywordExtractor) -> None:
    captions = [None, "", "the and of 1889 !!", "<br>", "Cat 🐱🚀", "Москва Кремль", "東京タワー 夜景", "مرحبا بالعالم"]
    kws, reasons = extractor.extract_with_reasons(captions)
    assert reasons[:4] == [REJECT_EMPTY, REJECT_EMPTY, REJECT_NO_KEYWORDS, REJECT_EMPTY_AFTER_NORMALISATION]
    assert kws[:4] == [[], [], [], []]
    assert kws[4] == ["cat"]
    assert "москва" in kws[5] and "москва кремль" in kws[5]
    assert "東京タワー" in kws[6]
    assert "مرحبا" in kws[7]
    assert reasons[4:] == [None] * 4
    assert extractor.extract_batch(captions) == kws


def test_long_caption_keywords(extractor: KeywordExtractor) -> None:
    kws = extractor.extract(" ".join(["astronaut riding horse"] * 1000))
    assert kws == ["astronaut", "ride", "horse", "astronaut ride", "ride horse", "horse astronaut",
                   "astronaut ride horse", "ride horse astronaut", "horse astronaut ride"]


def test_extractor_pickles_without_pipeline(extractor: KeywordExtractor) -> None:
    clone = pickle.loads(pickle.dumps(extractor))
    assert not clone.is_loaded
    assert clone.extract("astronauts") == ["astronaut"]


def test_missing_trained_pipeline_names_package() -> None:
    import spacy

    if spacy.util.is_package("en_core_web_sm"):
        pytest.skip("en_core_web_sm is installed here")
    ex = KeywordExtractor(KeywordConfig(spacy_model="en_core_web_sm"))
    with pytest.raises(ImportError, match="pip install en_core_web_sm"):
        ex.load()


def test_saved_pipeline_adds_entities(tmp_path: Path) -> None:
    """A pipeline given by path: its entities become extra keywords (lowercased, lemmatised)."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    ruler = nlp.add_pipe("entity_ruler")
    nlp.initialize()
    ruler.add_patterns([{"label": "WORK_OF_ART", "pattern": "The Starry Nights of Arles"}])
    nlp.to_disk(tmp_path / "pipe")
    ex = KeywordExtractor(KeywordConfig(spacy_model=str(tmp_path / "pipe")))
    kws = ex.extract("Print of The Starry Nights of Arles, framed")
    assert "starry night of arles" in kws  # entity: edge stop words trimmed, lemmatised, lowercase
    assert "starry night" in kws and "print" in kws


# ---------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------


@pytest.fixture
def vocab_dir(shared_data: Path) -> Path:
    d = shared_data / "vocab"
    if not d.is_dir():
        pytest.skip(f"vocabulary folder not found at {d}")
    return d


def test_normalize_vocab_name() -> None:
    assert normalize_vocab_name("flag_pole") == ("flag pole", None)
    assert normalize_vocab_name("bow_(weapon)") == ("bow", "weapon")
    assert normalize_vocab_name("wiper_(for_windshield/screen)") == ("wiper", "for windshield/screen")
    assert normalize_vocab_name("Human eye") == ("human eye", None)


def test_load_lvis(vocab_dir: Path) -> None:
    v = load_vocab(vocab_dir / "lvis_v1_categories.json")
    assert len(v) == 1203
    assert all(e.source == "lvis" and e.synonyms[0] == e.name for e in v)
    by_raw = {e.raw_name: e for e in v}
    bow = by_raw["bow_(weapon)"]
    assert (bow.name, bow.qualifier, bow.category_id) == ("bow", "weapon", 136)
    assert by_raw["aerosol_can"].synonyms == ("aerosol can", "spray can")
    assert "taxi" in by_raw["cab_(taxi)"].synonyms
    assert all("_" not in s and "(" not in s for e in v for s in e.synonyms)
    names_txt = load_vocab(vocab_dir / "lvis_v1_names.txt")
    assert [e.name for e in names_txt] == [e.name for e in v]


def test_load_coco_panoptic_openimages(vocab_dir: Path) -> None:
    coco = load_vocab(vocab_dir / "coco80_categories.json")
    assert len(coco) == 80 and coco[0].name == "person" and coco[9].name == "traffic light"
    assert [e.name for e in load_vocab(vocab_dir / "coco80_names.txt")] == [e.name for e in coco]
    pan = load_vocab(vocab_dir / "coco_panoptic133_categories.json")
    assert len(pan) == 133
    by_raw = {e.raw_name: e for e in pan}
    assert by_raw["wall-other-merged"].name == "wall"
    assert by_raw["wall-brick"].synonyms == ("wall brick", "brick wall", "wall")
    assert by_raw["door-stuff"].name == "door"
    oi = load_vocab(vocab_dir / "openimages_v4_boxable_601.csv")
    assert len(oi) == 601
    assert oi[0].category_id == "/m/011k07" and oi[0].name == "tortoise"
    assert any(e.name == "flag" for e in oi)


def test_user_list(tmp_path: Path) -> None:
    p = tmp_path / "objects.txt"
    p.write_text("# my objects\nUS flag: american flag, stars and stripes\n\nflag_pole\nspace_shuttle: orbiter\n")
    v = load_vocab(p)
    assert [e.name for e in v] == ["us flag", "flag pole", "space shuttle"]
    assert v[0].synonyms == ("us flag", "american flag", "stars and stripes")
    assert parse_vocab_lines(["a: b"])[0].synonyms == ("a", "b")
    with pytest.raises(ValueError, match="format must be one of"):
        load_vocab(p, format="yaml")
    with pytest.raises(FileNotFoundError):
        load_vocab(tmp_path / "missing.txt")


def test_mentions_text_and_keywords(extractor: KeywordExtractor) -> None:
    flag = VocabEntry("us flag", ("american flag", "stars and stripes", "flag"))
    assert mentions("Astronaut planting American flags on the Moon", flag, extractor)  # lemma + multiword
    assert mentions("waving the stars and stripes", flag, extractor)  # stop word inside a synonym
    assert not mentions("Astronaut on the Moon", flag, extractor)
    assert not mentions("a flagpole at dawn", flag, extractor)  # word boundary
    assert not mentions("american, flagpole", flag, extractor)
    kws = extractor.extract("Astronaut planting American flags on the Moon")
    assert mentions(kws, flag, extractor)
    tee = VocabEntry("t-shirt", ("tee shirt",))
    assert mentions("man in a T-shirt", tee, extractor) and mentions("a t shirt", tee, extractor)
    assert mentions("blue tee shirts", tee, extractor)
    assert not mentions("a blue shirt", tee, extractor)


def test_vocab_matcher_batch_on_lvis(vocab_dir: Path, extractor: KeywordExtractor) -> None:
    v = load_vocab(vocab_dir / "lvis_v1_categories.json")
    m = VocabMatcher(v, extractor)
    caps = ["An astronaut with the flag on the moon", None, "Taxis and a double-decker bus", "nothing here"]
    out = m.mentioned_batch(caps)
    raw = [[v[i].raw_name for i in ids] for ids in out]
    assert "flag" in raw[0] and "flagpole" not in raw[0]
    assert raw[1] == []
    assert "cab_(taxi)" in raw[2] and "bus_(vehicle)" in raw[2]
    assert all(ids.dtype == np.int64 for ids in out)
    flag_idx = next(i for i, e in enumerate(v) if e.raw_name == "flag")
    assert m.mentions(caps[0], flag_idx) and m.mentions(caps[0], v[flag_idx])
    with pytest.raises(ValueError, match="entry index"):
        m.mentions(caps[0], len(v))
    assert pickle.loads(pickle.dumps(m)).mentions(caps[0], flag_idx)


# ---------------------------------------------------------------------------
# Real LAION captions
# ---------------------------------------------------------------------------


def test_real_laion_captions(shared_data: Path, extractor: KeywordExtractor) -> None:
    path = shared_data / "laion_meta" / "img2dataset_test_10000.parquet"
    if not path.is_file():
        pytest.skip(f"LAION caption sample not found at {path}")
    import pyarrow.parquet as pq

    captions = pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist()
    assert len(captions) == 10_000
    kws, reasons = extractor.extract_with_reasons(captions)
    assert len(kws) == len(reasons) == 10_000
    for k, r in zip(kws, reasons):
        assert (len(k) > 0) != (r is not None)
        assert all(x == x.lower() and x.strip() == x and x for x in k)
        assert len(k) == len(set(k))
    assert sum(r is None for r in reasons) > 9_500
