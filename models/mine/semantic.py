"""The semantic mention test: does a caption name object o, or a WordNet relative of it?

An object trigger (w, o) is only interesting when the captions with w do
*not* name o. A plain string test calls synonyms, hypernyms and parts
"unmentioned" (a caption "bus" and a tag "trolleybus"; "skirt" and
"miniskirt"; "train" and "passenger car"). This test counts o as mentioned by
a caption when a token or n-gram (n <= 3) of it is, in WordNet 3.0 (noun
senses, any sense of the caption word):

* a synonym of o (shares a synset with it);
* a hypernym of o within ``depth`` steps ("skirt" for miniskirt, depth 1);
* a hyponym of o within ``depth`` steps ("trolleybus" for bus);
* a whole that o, or a hypernym of o within ``depth`` steps, is a part or
  member of (part and member holonyms: "train" for passenger car, which is
  a railway car, a member of a train; "bathroom" for a bathtub);

plus the string test of :class:`models.mine.mentions.VocabMatcher` over the
vocabulary's own names and synonyms, to which the head noun of every
multi-word name of o is added ("bed" for "day bed", "sign" for "street sign":
a compound names a kind of its head).

o's synsets: the entry's ``synset`` (LVIS synset names such as
``flag.n.01``, ImageNet WordNet ids such as ``n03355925``), else the first
noun sense of its name (WordNet's most frequent sense). Default depth 3: far
enough for "bus" -> trolleybus -> ... and "container" -> washbasin, short of
the generic tops ("artifact", "entity") that would name everything.

WordNet is read offline with nltk's :class:`WordNetCorpusReader` from the
Debian ``wordnet-base`` database (``/usr/share/wordnet``); nothing is
downloaded. Where it is absent the stage falls back to the string test and
its summary says so (:func:`describe_mention_test`).
"""
from __future__ import annotations

import io
import os
from functools import lru_cache
from typing import Any, NamedTuple, Sequence

import numpy as np

from models.mine.keywords import KeywordExtractor
from models.mine.mentions import VocabMatcher
from models.mine.vocab import VocabEntry

__all__ = ["DEFAULT_DEPTH", "WORDNET_DIR", "SemanticMatcher", "describe_mention_test", "load_wordnet",
           "object_relatives", "wordnet_available"]

WORDNET_DIR = os.environ.get("DUPMINE_WORDNET", "/usr/share/wordnet")
DEFAULT_DEPTH = 3
MAX_NGRAM = 3
_SENSE_CACHE_LIMIT = 500_000
# WordNet 3.0's lexicographer files (lexnames(5WN); the Debian package ships the database without this file).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()
_LEX_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def wordnet_available(root: str = WORDNET_DIR) -> bool:
    """Whether a WordNet 3.0 database (``data.noun``, ``index.noun``) is installed at ``root``."""
    return all(os.path.isfile(os.path.join(root, f)) for f in ("data.noun", "index.noun", "noun.exc"))


@lru_cache(maxsize=2)
def load_wordnet(root: str = WORDNET_DIR):
    """nltk's WordNet reader over the installed database at ``root`` (once per process; ~7 s, ~150 MB).

    Raises:
      FileNotFoundError: no WordNet database at ``root`` (install Debian's ``wordnet-base``).
    """
    if not wordnet_available(root):
        raise FileNotFoundError(f"no WordNet 3.0 database at {root} (apt-get install wordnet-base)")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _DebianWordNet(WordNetCorpusReader):
        """The reader without the two files Debian leaves out: ``lexnames`` (given here) and OMW mappings."""

        def open(self, file):
            if file == "lexnames":
                return io.StringIO("".join(f"{i:02d}\t{n}\t{_LEX_CATEGORY[n.split('.')[0]]}\n"
                                           for i, n in enumerate(LEXNAMES)))
            return super().open(file)

        def map_wn(self, version="wordnet"):
            return None  # no Open Multilingual WordNet here; 3.0 is the only version read

    if root not in nltk.data.path:
        nltk.data.path.append(root)  # nltk only reads corpora under its data paths
    return _DebianWordNet(root, None)


def entry_synsets(wn, entry: VocabEntry) -> list:
    """o's synsets: its declared synset (name or WordNet id), else the first noun sense of its name or synonyms."""
    if entry.synset:
        s = str(entry.synset)
        if len(s) == 9 and s[0] == "n" and s[1:].isdigit():
            return [wn.synset_from_pos_and_offset("n", int(s[1:]))]
        try:
            return [wn.synset(s)]
        except Exception:  # nltk raises WordNetError (a bare Exception subclass) for unknown names
            pass
    for name in entry.synonyms:
        senses = wn.synsets(name.replace(" ", "_"), pos="n")
        if senses:
            return senses[:1]
    return []


class Relative(NamedTuple):
    synset: str     # synset name
    relation: str   # "synonym", "hypernym", "hyponym", "whole"
    steps: int


def object_relatives(wn, synsets: Sequence, depth: int) -> dict[int, Relative]:
    """Synsets that name o: offset -> how (synonym, hypernym/hyponym within ``depth``, part/member-whole)."""
    out: dict[int, Relative] = {}

    def add(s, relation, steps):
        if s.offset() not in out:
            out[s.offset()] = Relative(s.name(), relation, steps)

    up = []
    for s in synsets:
        add(s, "synonym", 0)
        frontier_up, frontier_down = [s], [s]
        up.append((s, 0))
        for step in range(1, depth + 1):
            frontier_up = [h for f in frontier_up for h in f.hypernyms() + f.instance_hypernyms()]
            frontier_down = [h for f in frontier_down for h in f.hyponyms() + f.instance_hyponyms()]
            for h in frontier_up:
                add(h, "hypernym", step)
                up.append((h, step))
            for h in frontier_down:
                add(h, "hyponym", step)
    for s, steps in up:
        for whole in s.part_holonyms() + s.member_holonyms():
            add(whole, "whole", steps)
    return out


def head_nouns(entry: VocabEntry) -> list[str]:
    """The last word of each multi-word name of ``entry`` ("day bed" -> "bed")."""
    return [name.split()[-1] for name in entry.synonyms if " " in name]


class SemanticMatcher(VocabMatcher):
    """:class:`VocabMatcher` plus WordNet relatives (see the module doc); same ``mentioned_batch`` interface.

    Args:
      entries: the vocabulary (E entries); results use indices into it.
      extractor: tokeniser and lemmatiser of the string test.
      depth: hypernym / hyponym steps.
      wordnet: a reader from :func:`load_wordnet` (default: the installed one).

    Memory: one offset -> objects index over every object's relatives (LVIS at
    depth 3: ~60k offsets) and a cache of caption n-gram senses (bounded).
    """

    def __init__(self, entries: Sequence[VocabEntry], extractor: KeywordExtractor | None = None, depth: int = DEFAULT_DEPTH,
                 wordnet=None) -> None:
        self.base_entries = list(entries)
        widened = [VocabEntry(e.name, tuple(e.synonyms) + tuple(head_nouns(e)), e.raw_name, e.qualifier, e.category_id,
                              e.source, e.synset) for e in entries]
        super().__init__(widened, extractor)
        self.depth = depth
        self._wn = wordnet
        self._index: dict[int, list[int]] | None = None
        self.relatives: list[dict[int, Relative]] = []
        self._senses: dict[str, tuple[int, ...]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_wn=None, _index=None, relatives=[], _senses={})
        return state

    @property
    def wordnet(self):
        if self._wn is None:
            self._wn = load_wordnet()
        return self._wn

    def compile(self) -> None:
        super().compile()
        if self._index is not None:
            return
        wn = self.wordnet
        self.relatives = [object_relatives(wn, entry_synsets(wn, e), self.depth) for e in self.base_entries]
        index: dict[int, list[int]] = {}
        for i, rel in enumerate(self.relatives):
            for offset in rel:
                index.setdefault(offset, []).append(i)
        self._index = index

    def senses(self, ngram: str) -> tuple[int, ...]:
        """Offsets of the noun senses of a caption n-gram (words joined by spaces; WordNet morphology applied)."""
        found = self._senses.get(ngram)
        if found is None:
            if len(self._senses) > _SENSE_CACHE_LIMIT:
                self._senses.clear()
            found = tuple(s.offset() for s in self.wordnet.synsets(ngram.replace(" ", "_"), pos="n"))
            self._senses[ngram] = found
        return found

    def _from_doc(self, doc) -> np.ndarray:
        hits = set(super()._from_doc(doc).tolist())
        index = self._index
        for seg in self._segments(doc):
            surface = [s for _, s in seg]
            for n in range(1, min(MAX_NGRAM, len(seg)) + 1):
                for i in range(len(seg) - n + 1):
                    for offset in self.senses(" ".join(surface[i : i + n])):
                        found = index.get(offset)
                        if found:
                            hits.update(found)
        return np.array(sorted(hits), dtype=np.int64)

    def explain(self, keyword: str, entry: int) -> str:
        """Why captions with ``keyword`` were judged not to name object ``entry``: what was tested, and how
        close the keyword itself comes to the object in WordNet."""
        self.compile()
        e = self.base_entries[entry]
        rel = self.relatives[entry]
        own = [r.synset for r in rel.values() if r.relation == "synonym"]
        counts = {k: sum(1 for r in rel.values() if r.relation == k) for k in ("hypernym", "hyponym", "whole")}
        senses = self.wordnet.synsets(keyword.replace(" ", "_"), pos="n")
        nearest = None
        targets = [self.wordnet.synset(name) for name in own]
        for s in senses:
            for t in targets:
                d = s.shortest_path_distance(t)
                if d is not None and (nearest is None or d < nearest[0]):
                    nearest = (d, s.name(), t.name())
        near = (f"nearest WordNet link: {nearest[1]} to {nearest[2]}, {nearest[0]} steps" if nearest
                else f"'{keyword}' has no WordNet noun sense" if not senses else "no WordNet path")
        return (f"semantic test: no caption n-gram is '{e.name}', its synonyms {list(e.synonyms)[:4]}, one of "
                f"{counts['hypernym']} hypernyms / {counts['hyponym']} hyponyms within {self.depth} steps or "
                f"{counts['whole']} wholes of {own or ['(no synset)']}; {near}")


def describe_mention_test(mode: str, depth: int, root: str = WORDNET_DIR) -> str:
    """One line for the summary: which mention test runs (and why the string test, where WordNet is absent)."""
    if mode == "semantic" and wordnet_available(root):
        return (f"semantic: string match or WordNet 3.0 ({root}) synonym, hypernym/hyponym within {depth} steps, "
                f"part-whole, compound head")
    if mode == "semantic":
        return f"string (WordNet not found at {root}: semantic mention test off; install wordnet-base)"
    return "string: the vocabulary's names and synonyms as whole-token n-grams"
