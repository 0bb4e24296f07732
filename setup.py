"""Dropout Prompt Learning: a Dassl/CoOp-style code base for CLIP prompt learning."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version():
    for line in (HERE / "dpl" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("dpl/__init__.py defines no __version__")


setup(
    name="dropout-prompt-learning",
    version=read_version(),
    description="Dropout Prompt Learning (DroPLe) and CLIP prompt-learning baselines on a Dassl-compatible engine",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["dpl", "dpl.*"]),
    include_package_data=True,
    package_data={"dpl": ["clip/assets/*"]},
    install_requires=[
        "torch>=2.1,<2.15",
        "torchvision>=0.16,<0.30",
        "openai-clip>=1.0.1",
        # openai-clip imports pkg_resources, which setuptools 81 removed.
        "setuptools>=77.0.3,<81",
        "yacs>=0.1.8",
        "tabulate>=0.9",
        "tqdm>=4.60",
        "numpy>=1.22",
        "scipy>=1.8",
        "Pillow>=9.0",
    ],
    extras_require={
        "test": ["pytest>=7.0"],
        "tensorboard": ["tensorboard>=2.10"],
        "plot": ["matplotlib>=3.5"],
        # scripts/run_protocol.py --launcher slurm
        "cluster": ["submitit>=1.5"],
    },
)
