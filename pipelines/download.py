"""``dupmine download``: a thin wrapper over img2dataset for URL lists.

    dupmine download --url-list urls.parquet --output shards/ [--input-format parquet]
        [--url-col url] [--caption-col caption] [--image-size 256] [--processes 1] [--threads 16]

Writes img2dataset webdataset shards (``NNNNN.tar`` + ``NNNNN.parquet`` +
``NNNNN_stats.json``), the input format of ``dupmine embed``, with sha256
hashes (the exact-duplicate key of dedup). img2dataset's own flags not listed
here keep img2dataset's defaults; its import-time version check is disabled
(``NO_ALBUMENTATIONS_UPDATE=1``).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, fields

from pipelines.common import positive_int, setup_logging, stage_parser

INPUT_FORMATS = ("txt", "csv", "tsv", "json", "parquet", "jsonl")
RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")


@dataclass(frozen=True)
class DownloadConfig:
    """Options of ``dupmine download``; each field maps to one img2dataset argument (:meth:`img2dataset_kwargs`)."""

    url_list: str
    output: str
    input_format: str = "parquet"
    url_col: str = "url"
    caption_col: str | None = "caption"
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    processes: int = 1
    threads: int = 16
    timeout: int = 10
    samples_per_shard: int = 10000

    def __post_init__(self):
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"--input-format {self.input_format!r}; expected one of {INPUT_FORMATS}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"--resize-mode {self.resize_mode!r}; expected one of {RESIZE_MODES}")
        for name in ("image_size", "processes", "threads", "timeout", "samples_per_shard"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")

    def img2dataset_kwargs(self) -> dict:
        return dict(
            url_list=self.url_list, output_folder=self.output, input_format=self.input_format, url_col=self.url_col,
            caption_col=self.caption_col, image_size=self.image_size, resize_mode=self.resize_mode,
            processes_count=self.processes, thread_count=self.threads, timeout=self.timeout,
            number_sample_per_shard=self.samples_per_shard, output_format="webdataset", enable_wandb=False,
            compute_hash="sha256", retries=0,
        )


def download(url_list: str, output: str, **options) -> None:
    """``DownloadConfig(url_list, output, **options)`` run through img2dataset (see :func:`run_img2dataset`)."""
    run_img2dataset(DownloadConfig(url_list, output, **options))


def run_img2dataset(cfg: DownloadConfig) -> None:
    """Run img2dataset; call it under ``if __name__ == "__main__"`` (it spawns processes)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        from img2dataset import download as i2d_download
    except ImportError as exc:
        raise ImportError("dupmine download needs img2dataset (pip install 'dupmine[download]' or pip install img2dataset)") from exc
    i2d_download(**cfg.img2dataset_kwargs())


HELP = {"url_list": "file or folder of URL lists (img2dataset url_list)", "output": "folder for the shards",
        "caption_col": "caption column ('' for none)"}
CHOICES = {"input_format": INPUT_FORMATS, "resize_mode": RESIZE_MODES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`DownloadConfig` field, with its default."""
    for f in fields(DownloadConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if f.default is MISSING:
            parser.add_argument(flag, required=True, help=HELP.get(f.name))
        else:
            kind = positive_int if isinstance(f.default, int) else str
            parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name), help=HELP.get(f.name))


def config_from_args(args: argparse.Namespace) -> DownloadConfig:
    values = {f.name: getattr(args, f.name) for f in fields(DownloadConfig)}
    return DownloadConfig(**values | {"caption_col": values["caption_col"] or None})


def run(argv: list[str] | None = None) -> None:
    parser = stage_parser("dupmine download", __doc__)
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv))
    setup_logging()
    run_img2dataset(cfg)
