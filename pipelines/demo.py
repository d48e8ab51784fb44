"""``dupmine demo``: the whole pipeline on a small LAION-like dataset built offline.

    dupmine demo [--output demo_out] [beam options]

1. builds ~600 images (scikit-image's bundled photos and procedural
   drawings) with planted exact and near-duplicate groups, a word-level
   trigger ("starry night"), an object-level trigger ("liftoff" images carry
   a rocket their captions never name), decoys, an XSS caption and broken URLs;
2. serves them on a loopback HTTP server and downloads them with img2dataset
   (``dupmine download``) into webdataset shards;
3. runs ``dupmine run`` (embed with the weight-free ``pixel`` model, dedup,
   mine, score against a closed-form target built from the data, report);
4. prints where the planted structure came out and where the report is.

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


def truth_report(items, run_dir: str) -> list[str]:
    """Where each planted structure ended up (groups, keyword and object trigger ranks)."""
    from models.storage import run_chain
    from models.storage import layout

    lines = []
    meta = layout.read_parquet(os.path.join(run_dir, "embed", "metadata"), ["key", "url"]).to_pylist()
    key_of = {m["url"].rsplit("/", 1)[-1]: m["key"] for m in meta}  # by file name: the port changes between runs
    groups = {r["key"]: r for r in run_chain.load_groups(os.path.join(run_dir, "dedup")).to_pylist()}
    for truth in sorted({i.truth for i in items if i.truth.startswith(("exact:", "near:", "word:"))}):
        keys = [key_of[i.name] for i in items if i.truth == truth and i.name in key_of]
        ids = {groups[k]["group_id"] for k in keys}
        size = max(groups[k]["group_size"] for k in keys)
        lines.append(f"{truth:<20} {len(keys):>3} planted -> {len(ids)} group(s), largest {size}")
    words = layout.read_parquet(os.path.join(run_dir, "mine", "keyword_triggers.parquet")).to_pylist()
    flagged = [w["keyword"] for w in words if w["flagged"]]
    lines.append(f"word triggers flagged: {flagged[:8]}")
    objects = layout.read_parquet(os.path.join(run_dir, "mine", "object_triggers.parquet")).to_pylist()
    top = [f"{o['keyword']} -> {o['object']}" for o in objects if o["flagged"]]
    lines.append(f"object triggers flagged: {top[:5] or 'none'}")
    return lines


def build_demo_target(run_dir: str, out_dir: str, n_reference: int = 10, per_reference: int = 20, seed: int = 0) -> tuple[str, str]:
    """A closed-form stand-in for "a diffusion model trained on this data", in the embedding space.

    The conditional perfect memorizer of METHODS 5.2-5.3 over the demo's
    image embeddings (the exact minimiser of the DDPM loss on this training
    set): each flagged prompt conditions on the rows of its duplicate group;
    each reference prompt (an ordinary singleton caption) conditions on
    ``per_reference`` distinct singleton images, like a generic prompt. It is
    small and exact, so the demo can score without any weights.

    Returns:
      (target spec, reference prompts file).
    """
    import json

    import numpy as np

    from models.storage import run_chain
    from models.storage import layout
    from models.score.targets.closed_form import MemorizerTarget, VPSchedule, save_memorizer

    emb = layout.EmbeddingFolder(os.path.join(run_dir, "embed"))
    parts = emb.parts()
    x = np.concatenate([np.asarray(layout.read_npy(emb.img_emb(i)), np.float64) for i in parts])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = [m for i in parts for m in layout.read_parquet(emb.metadata(i), ["key", "caption"]).to_pylist()]
    row = {m["key"]: j for j, m in enumerate(meta)}
    groups = run_chain.load_groups(os.path.join(run_dir, "dedup"), ["key", "group_id", "group_size"]).to_pylist()
    members: dict = {}
    for g in groups:
        members.setdefault(g["group_id"], []).append(row[g["key"]])
    unused = len(meta) + 1
    labels = np.full(len(meta), unused, np.int64)
    mapping = {}
    flagged = layout.read_parquet(os.path.join(run_dir, "mine", "flagged_prompts.parquet")).to_pylist()
    label_of_group: dict = {}
    for f in flagged:  # prompts sharing a duplicate group share its condition
        groups_of_prompt = [g for g in f["group_ids"] or [] if g in members]
        if not groups_of_prompt:
            continue
        key = tuple(sorted(groups_of_prompt))
        if key not in label_of_group:
            label_of_group[key] = len(label_of_group)
            labels[[j for g in key for j in members[g]]] = label_of_group[key]
        mapping[f["prompt"]] = label_of_group[key]
    singles = [members[g][0] for g, m in members.items() if len(m) == 1]
    rng = np.random.default_rng(seed)
    singles = [singles[i] for i in rng.permutation(len(singles))]
    reference = []
    for r in range(n_reference):
        rows = singles[r * per_reference:(r + 1) * per_reference]
        if len(rows) < per_reference:
            break
        label = len(label_of_group) + r
        labels[rows] = label
        prompt = meta[rows[0]]["caption"]
        mapping[prompt] = label
        reference.append(prompt)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "demo_target.npz")
    save_memorizer(path, MemorizerTarget(x, None, VPSchedule.linear(200), cond_labels=labels))
    with open(path + ".prompts.json", "w", encoding="utf-8") as f:
        json.dump(mapping, f, indent=1)
    ref_path = os.path.join(out_dir, "reference_prompts.txt")
    with open(ref_path, "w", encoding="utf-8") as f:
        f.write("\n".join(reference) + "\n")
    return f"memorizer:{path}", ref_path


def run(argv: list[str] | None = None) -> dict:
    from models.demo.data import demo_items
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
    common = ["--input", shards, "--output", run_dir, "--model", "pixel", "--threshold", "0.95", "--tagger", tagger,
              "--set", "mine.min_support=10"]
    run_stage.run([*common, "--only", "embed,dedup,mine", "--quiet", *beam_args])
    target, reference = build_demo_target(run_dir, os.path.join(out, "target"), seed=args.seed)
    summary = run_stage.run([*common, "--target", target, "--set", f"score.reference={reference}",
                             "--set", "score.n_samples=4", "--set", "score.n_dirs=32", "--set", "score.steps=25",
                             "--set", "score.side_n_syn=100", "--set", "score.side_n_g=100", *beam_args])
    print("\nplanted structure:")
    for line in truth_report(items, run_dir):
        print("  " + line)
    if tagger == "none":
        print("  (object mining skipped: no pretrained tagger offline; put the shared data beside the repo)")
    print(f"\nreport: {os.path.join(run_dir, 'report', 'index.html')}")
    return summary
