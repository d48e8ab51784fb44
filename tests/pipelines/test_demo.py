"""The demo's ground-truth precision line: a group joining different sources counts, copies of one do not."""
from models.demo.data import DemoItem
from pipelines.demo import group_precision


def _item(name, truth=""):
    return DemoItem(name, b"", "caption", truth)


def test_group_precision_counts_groups_that_join_different_sources():
    items = [_item("a.jpg", "near:cat"), _item("b.jpg", "near:cat"), _item("c.jpg"), _item("d.jpg"),
             _item("e.jpg", "exact:placeholder"), _item("f.jpg")]
    key_of = {i.name: i.name[0] for i in items}
    groups = {"a": {"group_id": "g1", "group_size": 2}, "b": {"group_id": "g1", "group_size": 2},   # one source
              "c": {"group_id": "g2", "group_size": 2}, "d": {"group_id": "g2", "group_size": 2},   # two drawings
              "e": {"group_id": "g3", "group_size": 2}, "f": {"group_id": "g3", "group_size": 2},   # copy + drawing
              }
    assert group_precision(items, key_of, groups) == \
        "duplicate groups: 3, of which mix different sources: 2 (group precision 0.333)"
    singletons = {k: {"group_id": k, "group_size": 1} for k in key_of.values()}
    assert group_precision(items, key_of, singletons).endswith("mix different sources: 0 (group precision 1.000)")
