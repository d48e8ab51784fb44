"""``dupmine download``: a thin wrapper over img2dataset for URL lists.

    dupmine download --url-list urls.parquet --output shards/ [--input-format parquet]
        [--url-col url] [--caption-col caption] [--image-size 256] [--processes 1] [--threads 16]

Writes img2dataset webdataset shards (``NNNNN.tar`` + ``NNNNN.parquet`` +
``NNNNN_stats.json``), the input format of ``dupmine embed``. img2dataset's
own flags not listed here keep img2dataset's defaults; its import-time
version check is disabled (``NO_ALBUMENTATIONS_UPDATE=1``).
"""
from __future__ import annotations

import os

from pipelines.common import positive_int, setup_logging, stage_parser


def download(url_list: str, output: str, input_format: str = "parquet", url_col: str = "url",
             caption_col: str | None = "caption", image_size: int = 256, resize_mode: str = "keep_ratio",
             processes: int = 1, threads: int = 16, timeout: int = 10, samples_per_shard: int = 10000) -> None:
    """Run img2dataset; call it under ``if __name__ == "__main__"`` (it spawns processes)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        from img2dataset import download as i2d_download
    except ImportError as exc:
        raise ImportError("dupmine download needs img2dataset (pip install 'dupmine[download]' or pip install img2dataset)") from exc
    i2d_download(
        url_list=url_list, output_folder=output, input_format=input_format, url_col=url_col, caption_col=caption_col,
        image_size=image_size, resize_mode=resize_mode, processes_count=processes, thread_count=threads,
        timeout=timeout, number_sample_per_shard=samples_per_shard, output_format="webdataset",
        enable_wandb=False, compute_hash="sha256", retries=0,
    )


def run(argv: list[str] | None = None) -> None:
    parser = stage_parser("dupmine download", __doc__)
    parser.add_argument("--url-list", required=True, help="file or folder of URL lists (img2dataset url_list)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--input-format", default="parquet", choices=["txt", "csv", "tsv", "json", "parquet", "jsonl"])
    parser.add_argument("--url-col", default="url")
    parser.add_argument("--caption-col", default="caption")
    parser.add_argument("--image-size", type=positive_int, default=256)
    parser.add_argument("--resize-mode", default="keep_ratio", choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"])
    parser.add_argument("--processes", type=positive_int, default=1)
    parser.add_argument("--threads", type=positive_int, default=16)
    parser.add_argument("--timeout", type=positive_int, default=10)
    parser.add_argument("--samples-per-shard", type=positive_int, default=10000)
    args = parser.parse_args(argv)
    setup_logging()
    download(args.url_list, args.output, args.input_format, args.url_col, args.caption_col or None, args.image_size,
             args.resize_mode, args.processes, args.threads, args.timeout, args.samples_per_shard)
