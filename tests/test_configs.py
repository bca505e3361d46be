"""The shipped configs and the docs agree with the schema: every key documented, every config valid."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from magicme.prompts import keyframes, referenced_names
from magicme.schema import check_sample_config, expand_samples, load_sample_config, sample_schema
from magicme.training.config import load_train_configs

SAMPLE = sorted(Path("configs/sample").glob("*.yaml")) + sorted(Path("configs/tiny").glob("sample*.yaml"))
TRAIN = sorted(Path("configs/train").glob("*.yaml")) + sorted(Path("configs/tiny").glob("train*.yaml"))


def leaf_keys(node, prefix: str = "") -> set[str]:
    """Dotted keys of a config's leaves (lists and free-form mappings such as scheduler kwargs count as leaves)."""
    keys = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "kwargs":
            keys |= leaf_keys(value, path + ".")
        else:
            keys.add(path)
    return keys


def test_example_config_documents_every_key():
    """configs/sample/example.yaml is the reference users read: a schema key missing there is undocumented."""
    schema = leaf_keys(OmegaConf.to_container(sample_schema()))
    example = leaf_keys(OmegaConf.to_container(OmegaConf.load("configs/sample/example.yaml")))
    assert schema - example == set(), "keys missing from configs/sample/example.yaml"


def test_readme_config_table_names_every_top_level_key():
    readme = Path("README.md").read_text()
    missing = [k for k in OmegaConf.to_container(sample_schema()) if f"`{k}" not in readme]
    assert missing == []


@pytest.fixture(scope="module")
def tiny_sparsectrl(tiny_bundle, tmp_path_factory) -> dict:
    """A tiny rgb SparseCtrl net and a keyframe image, for configs with `sparse_control:`."""
    from magicme.tiny.sparsectrl import save_png, save_tiny_sparsectrl

    folder = tmp_path_factory.mktemp("sparsectrl")
    return {"model": str(save_tiny_sparsectrl(folder / "rgb", tiny_bundle["sd15"] / "unet", "rgb")),
            "image": str(save_png(folder / "keyframe.png", np.full((64, 64, 3), 0.5)))}


@pytest.mark.parametrize("path", SAMPLE, ids=str)
def test_shipped_sampling_configs_pass_every_check(path, tiny_bundle, tmp_path, request):
    """Each shipped config, with its model files swapped for the tiny bundle's of its family, passes every
    pre-load check (ranges, stages, frames vs the motion module, identities)."""
    sdxl = OmegaConf.load(path).get("model", {}).get("family") == "sdxl"
    files = [f"model.base={tiny_bundle['sdxl']}", f"model.motion_module={tiny_bundle['motion_sdxl']}"] if sdxl else [
        f"model.base={tiny_bundle['sd15']}", f"model.motion_module={tiny_bundle['motion_v2']}",
        f"model.motion_loras=[{{path: {tiny_bundle['motion_lora']}, strength: 0.6}}]",
        f"model.loras=[{{path: {tiny_bundle['lora_animatelcm']}, strength: 0.8}}]"]
    cfg = load_sample_config(path, [
        *files, "model.base_config=null", "model.vae=null",
        f"model.embeddings_dir={tmp_path / 'emb'}", f"face.clipseg_model={tiny_bundle['clipseg']}",
        f"output_dir={tmp_path / 'out'}"])
    if cfg.input_video is not None:
        cfg.input_video = str(tiny_bundle["input_clip"])
    for entry in cfg.control:  # configs/tiny/sample_control*.yaml: the bundle's ControlNet and clip
        entry.model = str(tiny_bundle["controlnet"])
        if "video" in entry:
            entry.video = str(tiny_bundle["control_clip"])
        if entry.get("type") in ("depth", "pose"):  # configs/sample/edit_pose.yaml: the tiny preprocessor models
            entry.preprocessor = str(tiny_bundle[f"{entry.type}_model"])
        if "person" in entry:
            entry.person = str(tiny_bundle["clipseg"])
    if cfg.sparse_control is not None:  # the tiny net and a keyframe, with the v3-shaped module SparseCtrl needs
        sparse = request.getfixturevalue("tiny_sparsectrl")
        cfg.model.motion_module, cfg.sparse_control.model = str(tiny_bundle["motion_v3"]), sparse["model"]
        cfg.model.motion_loras = []  # the bundle's MotionLoRA is a v2 one
        cfg.sparse_control.type = "rgb"
        cfg.sparse_control.frames = {frame: sparse["image"] for frame in cfg.sparse_control.frames}
    (tmp_path / "emb").mkdir()
    identity = tiny_bundle["embedding_sdxl" if sdxl else "embedding"]
    grid = list(cfg.identities) if OmegaConf.is_list(cfg.identities) else []  # configs/tiny/sample_grid.yaml
    for name in grid:
        (tmp_path / "emb" / f"{name}{identity.suffix}").write_bytes(identity.read_bytes())
    texts = [text for s in expand_samples(cfg) for text in keyframes(s.prompt).values()]
    for name in {n for text in texts for n in referenced_names(text)}:  # the tiny identity under each name used
        (tmp_path / "emb" / f"{name}{identity.suffix}").write_bytes(identity.read_bytes())
    samples, embeddings = check_sample_config(cfg)
    assert samples and not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", TRAIN, ids=str)
def test_training_configs_load(path):
    for cfg in load_train_configs([path]):  # one per identity of an `identities:` config
        assert cfg.name and cfg.class_word and cfg.validation.prompts


def test_paper_preset_passes_the_model_doctor(tiny_bundle, tmp_path, capsys):
    """configs/sample/paper.yaml (the graph's settings) through scripts/check_models.py's structure checks, its
    files swapped for the tiny bundle's: every row passes, stages [t2v, face] and [t2v, face, tiled]."""
    from magicme.doctor import check_sample_config as doctor
    from magicme.inspector import FAIL

    (tmp_path / "emb").mkdir()
    for name in ("altman", "scarlett"):
        (tmp_path / "emb" / f"{name}.pt").write_bytes(tiny_bundle["embedding"].read_bytes())
    swaps = [f"model.base={tiny_bundle['sd15']}", "model.base_config=null", "model.vae=null",
             f"model.motion_module={tiny_bundle['motion_v2']}",
             f"model.motion_loras=[{{path: {tiny_bundle['motion_lora']}, strength: 0.6}}]",
             f"model.embeddings_dir={tmp_path / 'emb'}", f"face.clipseg_model={tiny_bundle['clipseg']}"]
    for stages in ("[t2v,face]", "[t2v,face,tiled]"):
        cfg = load_sample_config("configs/sample/paper.yaml", [*swaps, f"stages={stages}"])
        assert cfg.freeu.version == 2 and cfg.face.scheduler["name"] == "euler" and cfg.tiled.sharpen == 0.2
        report = doctor(cfg, models_dir=tmp_path / "no-extras")
        assert [c for c in report.checks if c.status == FAIL] == []  # optional extras are warnings
