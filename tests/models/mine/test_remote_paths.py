"""Vocabulary, labels, synset lists and classifier files through fsspec URLs (an in-memory filesystem here)."""
import json
import os

import fsspec
import pytest

from models.mine.taggers.classifier import local_copy, read_labels
from models.mine.vocab import load_vocab, read_synset_ids


@pytest.fixture()
def mem():
    fs = fsspec.filesystem("memory")
    yield fs
    for path in fs.find("/bucket"):
        fs.rm(path)


def test_vocab_labels_and_synsets_from_urls(mem):
    with mem.open("/bucket/vocab.txt", "w") as f:
        f.write("flag: banner, ensign\nboat\n")
    with mem.open("/bucket/lvis.json", "w") as f:
        json.dump([{"name": "flag", "synonyms": ["flag"], "id": 1, "synset": "flag.n.01"}], f)
    with mem.open("/bucket/labels.txt", "w") as f:
        f.write("background\ntench, Tinca tinca\n")
    with mem.open("/bucket/synsets.txt", "w") as f:
        f.write("n01440764\n\n")
    assert [(e.name, e.synonyms) for e in load_vocab("memory://bucket/vocab.txt")] == [
        ("flag", ("flag", "banner", "ensign")), ("boat", ("boat",))]
    (lvis,) = load_vocab("memory://bucket/lvis.json")
    assert lvis.synset == "flag.n.01" and lvis.source == "lvis"
    assert read_labels("memory://bucket/labels.txt") == ["background", "tench, Tinca tinca"]
    assert read_synset_ids("memory://bucket/synsets.txt") == ["n01440764"]
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        load_vocab("memory://bucket/missing.txt")


def test_remote_model_copied_once_with_its_sidecar(mem, tmp_path):
    with mem.open("/bucket/m/model.onnx", "wb") as f:
        f.write(b"not really onnx")
    path = local_copy("memory://bucket/m/model.onnx", cache_dir=str(tmp_path))
    assert open(path, "rb").read() == b"not really onnx" and path.startswith(str(tmp_path))
    assert local_copy("memory://bucket/m/model.onnx", cache_dir=str(tmp_path)) == path  # cached
    assert local_copy(str(tmp_path / "x.onnx")) == str(tmp_path / "x.onnx")             # local paths as they are
    with pytest.raises(FileNotFoundError):
        local_copy("memory://bucket/m/none.onnx", cache_dir=str(tmp_path))
    assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp-" in n]
