"""Real ingest: loopback HTTP server -> img2dataset (the real package) -> dupmine embed."""
import functools
import http.server
import os
import subprocess
import sys
import threading
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.storage import layout
from models.demo.synthetic import drawing, jpeg_bytes
from pipelines import embed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_img2dataset_shards_embed_with_every_url_accounted_for(http_root, tmp_path):
    import numpy as np

    root, base = http_root
    rng = np.random.default_rng(0)
    urls, captions = [], []
    for i in range(12):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes(drawing(rng, 96)))
        urls.append(f"{base}/{i}.jpg")
        captions.append(f"drawing number {i}")
    (root / "same.jpg").write_bytes((root / "0.jpg").read_bytes())  # an exact copy under another URL
    (root / "notes.txt").write_text("this is not an image")
    urls += [f"{base}/same.jpg", f"{base}/missing.jpg", f"{base}/notes.txt"]
    captions += ["copy", "a 404", "not an image"]
    url_list = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": captions}), url_list)

    shards = tmp_path / "shards"
    env = dict(os.environ, PYTHONPATH=REPO, NO_ALBUMENTATIONS_UPDATE="1", no_proxy="127.0.0.1,localhost")
    subprocess.run([sys.executable, "-m", "pipelines.cli", "download", "--url-list", str(url_list), "--output", str(shards),
                    "--threads", "4", "--timeout", "5"], env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert (shards / "00000.tar").exists() and (shards / "00000.parquet").exists()

    out = str(tmp_path / "emb")
    stats = embed.run(["--input", str(shards), "--output", out, "--model", "pixel"])
    folder = layout.EmbeddingFolder(out)
    meta = layout.read_parquet(folder.metadata("00000")).to_pylist()
    rejects = layout.read_parquet(folder.rejects("00000")).to_pylist()
    assert stats["rows"] == 13 and stats["rejects"] == 2
    assert embed.key_source_note(stats) == "ids from key (13 rows); exact matching on sha256"
    assert Counter([m["url"] for m in meta] + [r["url"] for r in rejects]) == Counter(urls)
    reasons = {r["url"].rsplit("/", 1)[-1]: r["reason"] for r in rejects}
    assert reasons["missing.jpg"].startswith("failed_to_download") and "404" in reasons["missing.jpg"]
    assert reasons["notes.txt"].startswith("failed_to_")  # img2dataset could not decode it
    by_url = {m["url"].rsplit("/", 1)[-1]: m for m in meta}
    assert by_url["0.jpg"]["sha256"] == by_url["same.jpg"]["sha256"]
    emb = np.asarray(layout.read_npy(folder.img_emb("00000")), np.float32)
    idx = {m["url"].rsplit("/", 1)[-1]: j for j, m in enumerate(meta)}
    assert float(emb[idx["0.jpg"]] @ emb[idx["same.jpg"]]) > 0.999


def test_download_flags_are_the_config_fields_and_reach_img2dataset():
    from pipelines import download
    from tests.pipelines.config_checks import parse_stage_flags

    def parse(argv):
        return download.config_from_args(parse_stage_flags(download.add_arguments, download.DownloadConfig, argv))

    assert parse(["--url-list", "u.parquet", "--output", "o"]) == download.DownloadConfig(url_list="u.parquet", output="o")
    args = ["--url-list", "u", "--output", "o", "--input-format", "csv", "--url-col", "URL", "--caption-col", "",
            "--image-size", "64", "--resize-mode", "border", "--processes", "2", "--threads", "3", "--timeout", "4",
            "--samples-per-shard", "5"]
    kw = parse(args).img2dataset_kwargs()
    assert {k: kw[k] for k in ("url_list", "output_folder", "input_format", "url_col", "caption_col", "image_size",
                               "resize_mode", "processes_count", "thread_count", "timeout", "number_sample_per_shard")} == {
        "url_list": "u", "output_folder": "o", "input_format": "csv", "url_col": "URL", "caption_col": None,
        "image_size": 64, "resize_mode": "border", "processes_count": 2, "thread_count": 3, "timeout": 4,
        "number_sample_per_shard": 5}
    with pytest.raises(ValueError, match="expected one of"):
        download.DownloadConfig(url_list="u", output="o", resize_mode="stretch")
