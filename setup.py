"""Install the `react` framework: `pip install -e ".[dev]"`."""
from setuptools import find_packages, setup

DOCS = ["mkdocs>=1.6", "mkdocs-material>=9"]

setup(
    name="react",
    version="0.1.0",
    description="REACT: retrieval-augmented customization of vision-language models, "
    "carried into open-vocabulary detection and segmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["react_core", "react_core.*", "react_dense", "react_dense.*"]),
    package_data={
        "react_core": ["modeling/model_configs/*.json", "resources/*"],
        "react_dense": ["lab/configs/*.yaml", "lab/resources/*"],
    },
    install_requires=[
        "torch>=2.6",  # torch.load defaults to weights_only=True
        "torchvision>=0.21",
        "open_clip_torch>=2.24",
        "faiss-cpu>=1.8",
        "pycocotools>=2.0.7",
        "faster-coco-eval>=1.6",
        "mmengine>=0.10",
        "omegaconf>=2.3",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pillow>=10",
        "pyarrow>=14",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "pandas>=2.0",
        "pyyaml>=6.0",
        "timm>=0.9",
    ],
    # docs: the mkdocs site (`mkdocs build --strict`, run by CI, so `dev` includes it);
    # browser: the headless-Chromium test of `react report` (with a system Chromium, e.g. Debian's `chromium`);
    # ray: `react embed --ray` (Ray Data; tested with 2.60)
    extras_require={
        "dev": ["pytest>=7", "huggingface_hub>=0.20", *DOCS],
        "docs": DOCS,
        "browser": ["playwright>=1.40"],
        "ray": ["ray[data]>=2.60"],
    },
    entry_points={
        "console_scripts": ["react=react_core.cli:main"],
        "react.commands": [
            "detect = react_dense.cli.detect_cmd",
            "synth = react_dense.lab.synth_cmd",
            "demo = react_dense.lab.demo_cmd",
            "segment = react_dense.cli.segment_cmd",
        ],
        "react.plugins": ["dense = react_dense.plugin"],
    },
)
