"""Write the Flex Template metadata, one file per stage, from the stages' argparse flags.

    .venv/bin/python deploy/dataflow/make_metadata.py          # rewrite deploy/dataflow/metadata/*.json
    .venv/bin/python deploy/dataflow/make_metadata.py --check  # exit 1 if the committed files are stale

One file per stage (``metadata/embed.json``, ``metadata/dedup.json``, ...)
because Dataflow validates ``isOptional`` and ``regexes`` per template: a
combined file would have to mark every flag optional (``--input`` is required
by embed, absent from dedup), merge flags that mean different things per stage
(``--seed`` defaults to 1234 in dedup and 0 in mine) and accept flags the
chosen stage does not have. All templates share one launcher image;
``build.sh`` builds one spec per file. See ``template_params.py`` for how a
flag becomes a parameter.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Run from a checkout: the stage modules live two folders up (an installed dupmine wins).
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import template_params  # noqa: E402  (sibling module; this script's folder is on sys.path)

METADATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata")


def render(stage: str) -> str:
    """The metadata file of ``stage`` as committed: indented JSON, trailing newline."""
    return json.dumps(template_params.metadata(stage), indent=2, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> content, for every stage a template exposes."""
    return {f"{stage}.json": render(stage) for stage in template_params.template_stages()}


def stale_files(directory: str = METADATA_DIR) -> list[str]:
    """Names of metadata files that are missing, different from the generated ones, or left over."""
    expected = expected_files()
    present = {n for n in os.listdir(directory) if n.endswith(".json")} if os.path.isdir(directory) else set()
    stale = sorted(present - set(expected))
    for name, content in expected.items():
        path = os.path.join(directory, name)
        if name not in present:
            stale.append(name)
            continue
        with open(path, encoding="utf-8") as f:
            if f.read() != content:
                stale.append(name)
    return sorted(set(stale))


def write(directory: str = METADATA_DIR) -> list[str]:
    """Rewrite ``directory`` to hold exactly the generated files; return their names."""
    os.makedirs(directory, exist_ok=True)
    expected = expected_files()
    for name in os.listdir(directory):
        if name.endswith(".json") and name not in expected:
            os.remove(os.path.join(directory, name))
    for name, content in expected.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(content)
    return sorted(expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    parser.add_argument("--dir", default=METADATA_DIR, help="metadata folder (default %(default)s)")
    args = parser.parse_args(argv)
    for stage in template_params.stages_without_flags():
        print(f"note: no template for '{stage}': pipelines/{stage}.py has no add_arguments(parser)", file=sys.stderr)
    if args.check:
        stale = stale_files(args.dir)
        if stale:
            print(f"stale Flex Template metadata: {', '.join(stale)}; run: python deploy/dataflow/make_metadata.py",
                  file=sys.stderr)
            return 1
        print(f"metadata up to date ({len(expected_files())} stage(s))")
        return 0
    names = write(args.dir)
    print(f"wrote {', '.join(names)} to {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
