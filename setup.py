"""dupmine: find the duplication that makes text-to-image models memorize.

Install for development with the pinned set: ``make venv`` (see README).
"""
from setuptools import find_packages, setup

# One pinned Beam version, shared with deploy/ images.
BEAM_VERSION = "2.77.0"

setup(
    name="dupmine",
    version="0.1.0",
    description="Duplicate, memory-trigger and memorization mining for image-text datasets (Apache Beam).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*", "models", "models.*"]),
    package_data={"models.embed": ["configs/*.json"], "models.report": ["templates/*.j2", "templates/*.css"]},
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        "numpy>=1.26",
        "pyarrow>=14",
        "pillow>=10",
        "fsspec>=2023.1",
        "faiss-cpu>=1.8",
        "onnxruntime>=1.17",
        "scipy>=1.11",
        "pyyaml>=6",
        # The torch/torchvision pair must match: never leave torchvision unpinned
        # (it drags in a newer torch with GBs of CUDA wheels). See models/tv_compat.py.
        "torch==2.13.0",
        "torchvision==0.28.0",
        "open_clip_torch>=2.24",
        "spacy>=3.7,<4",
        "spacy-lookups-data>=1.0",
    ],
    extras_require={
        "gpu": ["faiss-gpu>=1.8"],
        "diffusion": ["diffusers>=0.30", "transformers>=4.40"],
        "download": ["img2dataset>=1.45"],
        "demo": ["img2dataset>=1.45", "scikit-image>=0.22"],
        "report": ["matplotlib>=3.7"],
        "test": ["pytest>=8", "onnx>=1.15", "scikit-image>=0.22", "selenium>=4.20", "networkx>=3", "img2dataset>=1.45", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["dupmine=pipelines.cli:main"]},
)
