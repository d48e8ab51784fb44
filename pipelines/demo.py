"""``dupmine demo``: the whole pipeline on a small LAION-like dataset built offline.

    dupmine demo [--output demo_out] [beam options]

1. builds ~600 images (scikit-image's bundled photos and procedural
   drawings) with planted exact and near-duplicate groups, a word-level
   trigger ("starry night"), an object-level trigger ("liftoff" images carry
   a rocket their captions never name), decoys, an XSS caption and broken URLs;
2. serves them on a loopback HTTP server and downloads them with img2dataset
   (``dupmine download``) into webdataset shards;
3. runs ``dupmine run`` up to mine (embed with the weight-free ``pixel`` model,
   dedup, mine);
4. trains a small text-conditional diffusion model on the same shards
   (:mod:`models.demo.demo_model`, 8x8 RGB, the planted rows and 100
   ordinary ones; cached by its training
   parameters and data, so a rerun reuses it) and scores the flagged prompts
   against it (``--target diffusers:DIR``), then the report;
5. prints where the planted structure came out, how often the model copies
   each planted group (measured), and what each check decided.

Object tags need a pretrained tagger: the shared MobileNet v2 ImageNet
classifier (``../shared/data/models``) when it is present, else object
mining is skipped (``--tagger none``) and the demo says so.
"""
from __future__ import annotations

import functools
import http.server
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common import setup_logging, shared_data_file, split_args, stage_parser


# The pixel embedding's near-copy threshold on the demo's images, measured with group_precision: at 0.95 every
# planted copy is in its group and no group joins different sources; at 0.90 two different background drawings
# join at cosine 0.916 (benchmarks/bench_pixel_copy.py: on its synthetic drawings 0.90 would also be clean).
DEMO_THRESHOLD = "0.95"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``root`` on 127.0.0.1 (random port) from a daemon thread; returns (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def write_site(items, www: str, base: str, url_list: str) -> None:
    os.makedirs(www, exist_ok=True)
    for item in items:
        if item.data is not None:
            with open(os.path.join(www, item.name), "wb") as f:
                f.write(item.data)
    pq.write_table(pa.table({"url": [f"{base}/{i.name}" for i in items], "caption": [i.caption for i in items]}), url_list)


def shared_tagger() -> str:
    """``onnx-classifier:`` spec of the shared MobileNet v2, or ``none`` when the shared data is absent."""
    model = shared_data_file("models", "mobilenet_v2_imagenet.onnx")
    labels = shared_data_file("models", "imagenet_labels.txt")
    return f"onnx-classifier:{model},{labels}" if model and labels else "none"


def keys_by_file_name(run_dir: str) -> dict[str, str]:
    """{image file name: training key} from the run's embed metadata (by file name: the port changes between runs)."""
    from models.storage import layout

    meta = layout.read_parquet(os.path.join(run_dir, "embed", "metadata"), ["key", "url"]).to_pylist()
    return {m["url"].rsplit("/", 1)[-1]: m["key"] for m in meta}


def truth_report(items, run_dir: str, key_of: dict[str, str]) -> list[str]:
    """Where each planted structure ended up (groups, keyword and object trigger ranks); ``key_of``:
    :func:`keys_by_file_name` of the run."""
    from models.storage import run_chain
    from models.storage import layout

    lines = []
    groups = {r["key"]: r for r in run_chain.load_groups(os.path.join(run_dir, "dedup")).to_pylist()}
    for truth in sorted({i.truth for i in items if i.truth.startswith(("exact:", "near:", "word:"))}):
        keys = [key_of[i.name] for i in items if i.truth == truth and i.name in key_of]
        ids = {groups[k]["group_id"] for k in keys}
        size = max(groups[k]["group_size"] for k in keys)
        lines.append(f"{truth:<20} {len(keys):>3} planted -> {len(ids)} group(s), largest {size}")
    lines.append(group_precision(items, key_of, groups))
    words = layout.read_parquet(os.path.join(run_dir, "mine", "keyword_triggers.parquet")).to_pylist()
    flagged = [w["keyword"] for w in words if w["flagged"]]
    lines.append(f"word triggers flagged: {flagged[:8]}")
    objects = layout.read_parquet(os.path.join(run_dir, "mine", "object_triggers.parquet")).to_pylist()
    top = [f"{o['keyword']} -> {o['object']}" for o in objects if o["flagged"]]
    lines.append(f"object triggers flagged: {top[:5] or 'none'}")
    return lines


# Planted copies of one source image. The liftoff images paste one rocket photo (55-85% of the height) onto
# different drawings, so they share that source; every other item (background drawings) is its own source.
COPY_PREFIXES = ("exact:", "near:", "word:", "object:")


def group_precision(items, key_of: dict[str, str], groups: dict[str, dict]) -> str:
    """How many duplicate groups join images of different sources (the ground truth of the demo's precision).

    An item's source is its planted truth (:data:`COPY_PREFIXES`), else the item itself: background drawings are
    all different images, so a group holding two of them, or one and a planted copy, is a false group.
    """
    members: dict[str, set] = {}
    for item in items:
        row = groups.get(key_of.get(item.name, ""))
        if row and row["group_size"] > 1:
            members.setdefault(row["group_id"], set()).add(item.truth if item.truth.startswith(COPY_PREFIXES) else item.name)
    mixed = sum(len(sources) > 1 for sources in members.values())
    precision = 1.0 - mixed / len(members) if members else 1.0
    return f"duplicate groups: {len(members)}, of which mix different sources: {mixed} (group precision {precision:.3f})"


def truth_of_keys(items, key_of: dict[str, str]) -> dict[str, str]:
    """{training key: planted truth}; ``key_of``: :func:`keys_by_file_name` of the run."""
    truth = {i.name: i.truth for i in items}
    return {key: truth.get(name, "") for name, key in key_of.items()}


def detection_report(truth_of_key: dict[str, str], run_dir: str) -> list[str]:
    """Per check: how many flagged and reference prompts it calls memorized, and its calls on each planted group.

    ``truth_of_key``: :func:`truth_of_keys` of the run.
    """
    from models.storage import layout, run_chain
    from models.storage.folders.score import ScoreFolder

    path = ScoreFolder(os.path.join(run_dir, "score")).prompt_scores
    if not layout.exists(path):
        return ["(no score output)"]
    rows = layout.read_parquet(path).to_pylist()
    group_of = {g["key"]: g["group_id"] for g in run_chain.load_groups(os.path.join(run_dir, "dedup"), ["key", "group_id"]).to_pylist()}
    planted: dict = {}
    for key, truth in truth_of_key.items():
        if truth.startswith(("exact:", "near:", "word:", "object:")) and key in group_of:
            planted.setdefault(truth, set()).add(group_of[key])
    lines = []
    for check in sorted({r["check"] for r in rows}):
        mine = [r for r in rows if r["check"] == check]
        flagged = [r for r in mine if r["role"] == "flagged"]
        ref = [r for r in mine if r["role"] == "reference"]
        calls = []
        for truth, gids in sorted(planted.items()):
            hits = [r for r in flagged if gids & set(r["group_ids"] or [])]
            if hits:
                calls.append(f"{truth} {sum(bool(r['decision']) for r in hits)}/{len(hits)}")
        lines.append(f"{check:<15} memorized: flagged {sum(bool(r['decision']) for r in flagged)}/{len(flagged)}, "
                     f"reference {sum(bool(r['decision']) for r in ref)}/{len(ref)}; planted: {', '.join(calls) or '-'}")
    return lines


def run(argv: list[str] | None = None) -> dict:
    from models.demo.data import demo_items
    from models.demo.demo_model import planted_memorization, train_demo_model
    from pipelines import download, run as run_stage

    parser = stage_parser("dupmine demo", __doc__)
    parser.add_argument("--output", default="demo_out")
    parser.add_argument("--seed", type=int, default=0)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    out = os.path.abspath(args.output)
    items = demo_items(args.seed)
    www, url_list, shards = (os.path.join(out, d) for d in ("www", "urls.parquet", "shards"))
    server, base = serve(www)
    try:
        write_site(items, www, base, url_list)
        if not os.path.exists(os.path.join(shards, "00000.tar")):
            download.download(url_list, shards, threads=8, timeout=5)
    finally:
        server.shutdown()
    tagger = shared_tagger()
    run_dir = os.path.join(out, "run")
    common = ["--input", shards, "--output", run_dir, "--model", "pixel", "--threshold", DEMO_THRESHOLD, "--tagger", tagger,
              "--set", "mine.min_support=10"]
    run_stage.run([*common, "--only", "embed,dedup,mine", "--quiet", *beam_args])
    key_of = keys_by_file_name(run_dir)
    truth = truth_of_keys(items, key_of)
    model, data = train_demo_model(shards, os.path.join(out, "target"), truth, seed=args.seed)
    print(f"target: {model.spec} ({'reused' if model.cached else f'{model.steps} steps in {model.seconds:.0f} s'}, "
          f"final loss {model.final_loss:.4f})")
    summary = run_stage.run([*common, "--target", model.spec, "--set", "score.n_samples=4", "--set", "score.n_dirs=32",
                             "--set", "score.steps=25", "--set", "score.max_prompts=12",
                             "--set", "score.side_n_syn=100", "--set", "score.side_n_g=100", *beam_args])
    print("\nplanted structure:")
    for line in truth_report(items, run_dir, key_of):
        print("  " + line)
    if tagger == "none":
        print("  (object mining skipped: no pretrained tagger offline; put the shared data beside the repo)")
    from models.score.targets.loading import load_target

    print("\nmemorization of the trained target, measured (Carlini et al. 2023 criterion, models/score/memorized.py):")
    for g in planted_memorization(load_target(model.spec, device="cpu"), data, truth):
        print(f"  {g.truth:<20} {g.memorized:>3}/{g.generations} generations of {g.prompts} caption(s) copy the "
              f"group's images ({g.other} copy another image)")
    print("\ndetection (score stage, calibrated on reference prompts):")
    for line in detection_report(truth, run_dir):
        print("  " + line)
    print(f"\nreport: {os.path.join(run_dir, 'report', 'index.html')}")
    return summary
