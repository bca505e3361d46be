"""The model doctor (magicme/doctor.py, scripts/check_models.py) on the tiny bundle: a complete, consistent set
passes; a missing, corrupt or misfitting file fails with a message naming it."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from magicme.doctor import check_models, safetensors_shapes, tensor_shapes
from magicme.embeddings import save_embedding
from magicme.models import load_base
from magicme.tiny.ldm import save_ldm_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_models.py"


def run_script(args: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("check_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


def model_cfg(bundle, **changes):
    cfg = {"base": str(bundle["sd15"]), "base_config": None, "vae": None, "motion_module": str(bundle["motion_v2"]),
           "motion_loras": [{"path": str(bundle["motion_lora"]), "strength": 0.6}],
           "embeddings_dir": str(bundle["embedding"].parent), "scheduler": "ddim", "animatediff_numerics": "original"}
    cfg.update(changes)
    return OmegaConf.create(cfg)


def failures(report) -> list[str]:
    return [f"{c.item} {c.path} {c.detail}" for c in report.checks if c.status == "FAIL"]


@pytest.fixture(scope="module")
def single_file(tiny_bundle, tmp_path_factory):
    """The tiny SD as a community-style single file, with and without VAE weights."""
    base = load_base(str(tiny_bundle["sd15"]), None, torch.float32)
    root = tmp_path_factory.mktemp("doctor")
    with_vae = save_ldm_checkpoint(base.unet, base.vae, base.text_encoder, root / "tiny_rv.safetensors")
    no_vae = save_ldm_checkpoint(base.unet, {}, base.text_encoder, root / "tiny_rv_noVAE.safetensors")
    return {"with_vae": with_vae, "no_vae": no_vae}


def test_complete_tiny_bundle_passes(tiny_bundle):
    report = check_models(model_cfg(tiny_bundle), extras=False)
    assert report.ok, report.table()
    detail = {c.item: c.detail for c in report.checks}
    assert "AnimateDiff v2, 32 frames max" in detail["model.motion_module"]
    assert "1 identities (4×32)" in detail["model.embeddings_dir"]


def test_single_file_base_with_base_config_passes(tiny_bundle, single_file):
    cfg = model_cfg(tiny_bundle, base=str(single_file["no_vae"]), base_config=str(tiny_bundle["sd15"]),
                    vae=str(tiny_bundle["sd15"]))
    report = check_models(cfg, extras=False)
    assert report.ok, report.table()
    assert "no VAE weights" in report.checks[0].detail


def test_novae_file_without_model_vae_fails(tiny_bundle, single_file):
    cfg = model_cfg(tiny_bundle, base=str(single_file["no_vae"]), base_config=str(tiny_bundle["sd15"]))
    assert any(f.startswith("model.vae") and "no VAE weights" in f for f in failures(check_models(cfg, extras=False)))


def test_single_file_without_base_config_fails(tiny_bundle, single_file):
    report = check_models(model_cfg(tiny_bundle, base=str(single_file["with_vae"])), extras=False)
    assert any(f.startswith("model.base_config") for f in failures(report))


def test_base_config_of_another_width_fails(tiny_bundle, single_file, tmp_path):
    config = tmp_path / "sd15"
    shutil.copytree(tiny_bundle["sd15"], config)
    (config / "text_encoder" / "config.json").write_text(
        (config / "text_encoder" / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 768'))
    report = check_models(model_cfg(tiny_bundle, base=str(single_file["with_vae"]), base_config=str(config)),
                          extras=False)
    assert any("text width 32 vs config 768" in f for f in failures(report)), report.table()


def test_missing_motion_module_is_named(tiny_bundle, tmp_path):
    missing = tmp_path / "mm_sd_v15_v2.ckpt"
    (fail,) = failures(check_models(model_cfg(tiny_bundle, motion_module=str(missing), motion_loras=[]),
                                    extras=False))
    assert str(missing) in fail and "--only motion" in fail


def test_corrupt_motion_module_is_named(tiny_bundle, tmp_path):
    broken = tmp_path / "mm_broken.ckpt"
    broken.write_bytes(Path(tiny_bundle["motion_v2"]).read_bytes()[:5000])  # a truncated download
    (fail, *_) = failures(check_models(model_cfg(tiny_bundle, motion_module=str(broken)), extras=False))
    assert str(broken) in fail and "not a readable checkpoint" in fail


def test_embedding_of_wrong_width_is_named(tiny_bundle, tmp_path):
    folder = tmp_path / "embeddings"
    shutil.copytree(tiny_bundle["embedding"].parent, folder)
    save_embedding(folder / "sdxl_person.pt", torch.zeros(4, 1280), "sdxl_person")
    (fail,) = failures(check_models(model_cfg(tiny_bundle, embeddings_dir=str(folder)), extras=False))
    assert "sdxl_person.pt" in fail and "width 1280, the text encoder 32" in fail


def test_motion_lora_needs_a_v2_module(tiny_bundle):
    (fail,) = failures(check_models(model_cfg(tiny_bundle, motion_module=str(tiny_bundle["motion_v3"])),
                                    extras=False))
    assert fail.startswith("model.motion_loras[0]") and "v2" in fail


def test_motion_module_of_other_channels_fails(tiny_bundle, tmp_path):
    config = tmp_path / "sd15"
    shutil.copytree(tiny_bundle["sd15"], config)
    unet = config / "unet" / "config.json"
    unet.write_text(unet.read_text().replace('"block_out_channels": [\n    32,\n    64\n  ]',
                                             '"block_out_channels": [\n    64,\n    64\n  ]'))
    report = check_models(model_cfg(tiny_bundle, base=str(config), motion_loras=[]), extras=False)
    assert any("channels (32, 64) do not fit the base UNet (64, 64)" in f for f in failures(report)), report.table()


def test_header_shapes_match_the_tensors(tiny_bundle, single_file):
    from safetensors.torch import load_file

    loaded = load_file(single_file["with_vae"])
    assert safetensors_shapes(single_file["with_vae"]) == {k: tuple(v.shape) for k, v in loaded.items()}
    state = torch.load(tiny_bundle["motion_v2"], weights_only=True)
    assert tensor_shapes(tiny_bundle["motion_v2"]) == {k: tuple(v.shape) for k, v in state.items()}


def test_script_exit_status(tiny_bundle, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle["clipseg"], models / "clipseg")
    overrides = [f"model.base={tiny_bundle['sd15']}", f"model.motion_module={tiny_bundle['motion_v2']}",
                 f"model.embeddings_dir={tiny_bundle['embedding'].parent}"]
    assert run_script(["--models-dir", str(models), *overrides]) == 0
    out = capsys.readouterr().out
    assert "clipseg" in out and "all model files present" in out
    assert run_script(["--models-dir", str(models), *overrides, f"model.motion_module={tmp_path / 'nope.ckpt'}"]) == 1
    assert "nope.ckpt" in capsys.readouterr().err
    assert run_script(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_face_stage_needs_its_clipseg_model(tiny_bundle, tmp_path, capsys):
    overrides = [f"model.base={tiny_bundle['sd15']}", f"model.motion_module={tiny_bundle['motion_v2']}",
                 f"model.embeddings_dir={tiny_bundle['embedding'].parent}", "stages=[t2v,face]"]
    assert run_script(["--models-dir", str(tmp_path), *overrides, f"face.clipseg_model={tiny_bundle['clipseg']}"]) == 0
    assert run_script(["--models-dir", str(tmp_path), *overrides, f"face.clipseg_model={tmp_path / 'none'}"]) == 1
    assert "face.clipseg_model" in capsys.readouterr().err
