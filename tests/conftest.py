"""Shared fixtures: the tiny random-weight bundle is built once per test session (about a second)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> dict[str, Path]:
    from magicme.tiny.bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model_cfg(tiny_bundle):
    from magicme.schema import model_config

    return model_config({
        "base": str(tiny_bundle["sd15"]), "base_config": None, "vae": None,
        "motion_module": str(tiny_bundle["motion_v2"]), "motion_loras": [],
        "embeddings_dir": str(tiny_bundle["embedding"].parent), "scheduler": "ddim",
        "animatediff_numerics": "original",
    })


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_bundle, tiny_model_cfg):
    from magicme.embeddings import find_embeddings
    from magicme.families.sd15 import load

    return load(tiny_model_cfg, find_embeddings(tiny_bundle["embedding"].parent), device="cpu")


@pytest.fixture(scope="session")
def tiny_models(tiny_bundle) -> Path:
    """The folder `scripts/make_tiny_models.py` writes (models/tiny): the bundle plus SparseCtrl, evaluation models
    and photos. configs/tiny/*.yaml run against it with `models/tiny/` replaced by this folder."""
    from magicme.tiny.extras import save_tiny_extras

    root = tiny_bundle["sd15"].parent
    save_tiny_extras(root)
    return root
