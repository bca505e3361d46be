"""Every shipped config matches the schema it is read with (catches drift between configs, docs and code)."""

from pathlib import Path

import pytest

from magicme.config import load_config
from magicme.training.config import load_train_config

SAMPLE = sorted(Path("configs/sample").glob("*.yaml")) + [Path("configs/tiny/sample.yaml")]
TRAIN = sorted(Path("configs/train").glob("*.yaml")) + [Path("configs/tiny/train.yaml")]


@pytest.mark.parametrize("path", SAMPLE, ids=str)
def test_sampling_configs_load(path):
    cfg = load_config(path)
    assert cfg.prompts and cfg.model.motion_module


@pytest.mark.parametrize("path", TRAIN, ids=str)
def test_training_configs_load(path):
    cfg = load_train_config(path)
    assert cfg.name and cfg.class_word and cfg.validation.prompts
