"""The model-file inspector (magicme/inspector.py) and the doctor on top of it (magicme/doctor.py,
scripts/check_models.py) on the tiny bundle: a complete, consistent set passes; a missing, truncated, corrupt or
misfitting file fails with a message naming it; files are read from their headers only."""

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from magicme.doctor import check_models
from magicme.embeddings import save_embedding
from magicme.errors import ConfigError
from magicme.inspector import (
    FAIL,
    Report,
    inspect_embeddings,
    inspect_model,
    tensor_shapes,
)
from magicme.safetensors_header import safetensors_header
from magicme.families.sd15 import load_base
from magicme.motion_module import read_state_dict
from magicme.tiny.ldm import save_ldm_checkpoint
from magicme.tiny.sd import tiny_motion_adapter

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
    return [f"{c.item} {c.path} {c.detail}" for c in report.checks if c.status == FAIL]


def as_safetensors(source: Path, target: Path) -> Path:
    save_file(read_state_dict(source), str(target))
    return target


def truncate(path: Path, drop: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:-drop])


def copy_base(bundle, target: Path, channels: tuple[int, int] | None = None, tokenizer: bool = True) -> Path:
    """The tiny SD folder, optionally without tokenizer/ or with other UNet widths in its config."""
    shutil.copytree(bundle["sd15"], target, ignore=None if tokenizer else shutil.ignore_patterns("tokenizer"))
    if channels:
        config = target / "unet" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "block_out_channels": list(channels)}))
    return target


@pytest.fixture(scope="module")
def single_file(tiny_bundle, tmp_path_factory):
    """The tiny SD as a community-style single file, with and without VAE weights."""
    base = load_base(str(tiny_bundle["sd15"]), None, torch.float32)
    root = tmp_path_factory.mktemp("doctor")
    with_vae = save_ldm_checkpoint(base.unet, base.vae, base.text_encoder, root / "tiny_rv.safetensors")
    no_vae = save_ldm_checkpoint(base.unet, {}, base.text_encoder, root / "tiny_rv_noVAE.safetensors")
    return {"with_vae": with_vae, "no_vae": no_vae}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """The tiny motion modules as diffusers MotionAdapter folders."""
    root = tmp_path_factory.mktemp("adapters")
    for version in ("v2", "v3"):
        tiny_motion_adapter(version).save_pretrained(root / version)
    return {version: root / version for version in ("v2", "v3")}


# --- the model: block ------------------------------------------------------------------------------------------


def test_complete_tiny_bundle_passes(tiny_bundle):
    report = check_models(model_cfg(tiny_bundle), extras=False)
    assert report.ok, report.table()
    detail = {c.item: c.detail for c in report.checks}
    assert "AnimateDiff v2, 32 frames max" in detail["model.motion_module"]
    assert "2 identities (4×32)" in detail["model.embeddings_dir"]
    info = report.info
    assert (info.family, info.text_width, info.unet_channels, info.cross_attention) == ("sd15", 32, (32, 64), 32)
    assert (info.motion.version, info.motion.max_seq_length, info.motion.block_out_channels) == ("v2", 32, (32, 64))
    report.raise_first()  # nothing to raise


def test_raise_first_names_item_path_and_problem(tiny_bundle, tmp_path):
    missing = tmp_path / "mm.ckpt"
    report = inspect_model(model_cfg(tiny_bundle, motion_module=str(missing), motion_loras=[]))
    with pytest.raises(ConfigError, match=rf"^model\.motion_module: {re.escape(str(missing))}: not found; run: bash "):
        report.raise_first()


def test_hub_ids_are_left_to_the_loader(tiny_bundle):
    report = inspect_model(model_cfg(tiny_bundle, base="runwayml/stable-diffusion-v1-5", vae="stabilityai/sd-vae"))
    assert report.ok, report.table()
    warned = {c.item: c.detail for c in report.checks if c.status == "warn"}
    assert warned == {"model.base": "Hub id, checked when loaded", "model.vae": "Hub id, checked when loaded"}
    assert report.info.text_width is None and report.info.unet_channels is None


def test_single_file_base_with_base_config_passes(tiny_bundle, single_file):
    cfg = model_cfg(tiny_bundle, base=str(single_file["no_vae"]), base_config=str(tiny_bundle["sd15"]),
                    vae=str(tiny_bundle["sd15"]))
    report = check_models(cfg, extras=False)
    assert report.ok, report.table()
    assert "no VAE weights" in report.checks[0].detail
    assert report.info.unet_channels == (32, 64) and report.info.text_width == 32


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


@pytest.mark.parametrize("family,keys", [
    ("SDXL", {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 768)}),
    ("SD2", {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
             "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (8, 1024)}),
])
def test_single_file_of_another_family_fails(tiny_bundle, tmp_path, family, keys):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in keys.items()}, str(path))
    report = inspect_model(model_cfg(tiny_bundle, base=str(path), base_config=str(tiny_bundle["sd15"])))
    (fail, *_) = failures(report)
    assert fail.startswith(f"model.base {path} an {family} model") and "model.family is sd15" in fail


def test_base_folder_without_tokenizer_fails(tiny_bundle, tmp_path):
    base = copy_base(tiny_bundle, tmp_path / "sd15", tokenizer=False)
    (fail,) = failures(inspect_model(model_cfg(tiny_bundle, base=str(base))))
    assert fail.startswith(f"model.base {base / 'tokenizer'} tokenizer (vocab.json, merges.txt) missing")


# --- truncated and corrupt files -------------------------------------------------------------------------------


def test_truncated_safetensors_motion_module_fails(tiny_bundle, tmp_path):
    module = as_safetensors(tiny_bundle["motion_v2"], tmp_path / "mm_v2.safetensors")
    assert inspect_model(model_cfg(tiny_bundle, motion_module=str(module))).ok
    truncate(module)
    report = inspect_model(model_cfg(tiny_bundle, motion_module=str(module)))
    assert failures(report)[0].startswith(f"model.motion_module {module} truncated safetensors file")
    assert "re-download it" in failures(report)[0]


def test_truncated_unet_weights_fail_the_script(tiny_bundle, tmp_path, capsys):
    base = copy_base(tiny_bundle, tmp_path / "sd15")
    weights = base / "unet" / "diffusion_pytorch_model.safetensors"
    truncate(weights)
    args = ["--models-dir", str(tmp_path), f"model.base={base}", f"model.motion_module={tiny_bundle['motion_v2']}",
            f"model.embeddings_dir={tiny_bundle['embedding'].parent}"]
    assert run_script(args) == 1
    captured = capsys.readouterr()
    assert f"model.base: {weights}: truncated safetensors file" in captured.err
    assert "all model files present" not in captured.out


def write_raw_safetensors(path: Path, header: dict, data: int) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data)
    return path


@pytest.mark.parametrize("header,data,message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4, "truncated safetensors file"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 12, "4 bytes after the last tensor"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "overlapping or out-of-order"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, 16, "overlapping or out-of-order"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "its shape [3] needs 12"),
    ({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, 8, "dtype 'F99'"),
    ({"a": {"shape": [2]}}, 8, "lacks dtype, shape or data_offsets"),
    ([1, 2], 0, "not a JSON object"),
])
def test_corrupt_safetensors_headers(tmp_path, header, data, message):
    path = write_raw_safetensors(tmp_path / "x.safetensors", header, data)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: .*{re.escape(message)}.*re-download it"):
        safetensors_header(path)


def test_unreadable_safetensors_prefixes(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ConfigError, match="truncated safetensors file"):
        safetensors_header(short)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ConfigError, match="header length .* is implausible"):
        safetensors_header(huge)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(struct.pack("<Q", 1000) + b'{"a": ')
    with pytest.raises(ConfigError, match="shorter than its header"):
        safetensors_header(cut)
    garbled = write_raw_safetensors(tmp_path / "garbled.safetensors", {}, 0)
    garbled.write_bytes(garbled.read_bytes().replace(b"{}", b"\xff}"))
    with pytest.raises(ConfigError, match="header is not JSON"):
        safetensors_header(garbled)


def test_corrupt_motion_module_is_named(tiny_bundle, tmp_path):
    broken = tmp_path / "mm_broken.ckpt"
    broken.write_bytes(Path(tiny_bundle["motion_v2"]).read_bytes()[:5000])  # a truncated download
    (fail, *_) = failures(check_models(model_cfg(tiny_bundle, motion_module=str(broken)), extras=False))
    assert str(broken) in fail and "not a readable checkpoint" in fail


def test_missing_motion_module_is_named(tiny_bundle, tmp_path):
    missing = tmp_path / "mm_sd_v15_v2.ckpt"
    (fail,) = failures(check_models(model_cfg(tiny_bundle, motion_module=str(missing), motion_loras=[]),
                                    extras=False))
    assert str(missing) in fail and "--only motion" in fail


# --- header-only reading -----------------------------------------------------------------------------------------


def test_safetensors_files_are_read_header_only(tiny_bundle, tmp_path, monkeypatch):
    """Tensor data replaced by 0xFF bytes (NaNs), every full-file reader disabled: inspection still sees a v2
    module and a fitting MotionLoRA, so it read nothing but headers."""
    module = as_safetensors(tiny_bundle["motion_v2"], tmp_path / "mm_v2.safetensors")
    lora = as_safetensors(tiny_bundle["motion_lora"], tmp_path / "lora.safetensors")
    for path in (module, lora):
        raw = path.read_bytes()
        start = 8 + struct.unpack("<Q", raw[:8])[0]
        path.write_bytes(raw[:start] + b"\xff" * (len(raw) - start))

    def refuse(*args, **kwargs):
        raise AssertionError("tensor data was read")

    import safetensors
    import safetensors.torch

    import magicme.checkpoint_io

    for owner, name in [(safetensors, "safe_open"), (safetensors.torch, "load_file"), (safetensors.torch, "load"),
                        (magicme.checkpoint_io, "load_checkpoint"), (torch, "load")]:
        monkeypatch.setattr(owner, name, refuse)
    report = inspect_model(model_cfg(tiny_bundle, motion_module=str(module), embeddings_dir=None,
                                     motion_loras=[{"path": str(lora), "strength": 1.0}]))
    assert report.ok, report.table()
    assert report.info.motion.version == "v2"


def test_importing_the_inspector_imports_no_torch_or_diffusers():
    code = ("import sys, magicme.inspector; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_header_shapes_match_the_tensors(tiny_bundle, single_file):
    from safetensors.torch import load_file

    loaded = load_file(single_file["with_vae"])
    assert tensor_shapes(single_file["with_vae"]) == {k: tuple(v.shape) for k, v in loaded.items()}
    state = torch.load(tiny_bundle["motion_v2"], weights_only=True)
    assert tensor_shapes(tiny_bundle["motion_v2"]) == {k: tuple(v.shape) for k, v in state.items()}


# --- motion modules and MotionLoRAs ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["original file", "MotionAdapter folder"])
def test_motion_module_of_other_channels_fails(tiny_bundle, adapters, tmp_path, kind):
    base = copy_base(tiny_bundle, tmp_path / "sd15", channels=(64, 64))
    module = tiny_bundle["motion_v2"] if kind == "original file" else adapters["v2"]
    report = inspect_model(model_cfg(tiny_bundle, base=str(base), motion_module=str(module), motion_loras=[]))
    (fail,) = failures(report)
    assert fail.startswith(f"model.motion_module {module} ")
    assert "channels (32, 64) do not fit the base UNet (64, 64)" in fail


def test_motion_adapter_folder_and_its_loras(tiny_bundle, adapters):
    report = inspect_model(model_cfg(tiny_bundle, motion_module=str(adapters["v2"])))
    assert report.ok, report.table()
    assert report.info.motion.version == "v2" and report.info.motion.block_out_channels == (32, 64)
    (fail,) = failures(inspect_model(model_cfg(tiny_bundle, motion_module=str(adapters["v3"]))))
    assert fail.startswith("model.motion_loras[0]") and "need a v2 module" in fail


def test_truncated_motion_adapter_weights_fail(tiny_bundle, adapters, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(adapters["v2"], folder)
    truncate(folder / "diffusion_pytorch_model.safetensors")
    (fail,) = failures(inspect_model(model_cfg(tiny_bundle, motion_module=str(folder))))
    assert fail.startswith(f"model.motion_module {folder / 'diffusion_pytorch_model.safetensors'} truncated")


def test_motion_lora_needs_a_v2_module(tiny_bundle):
    (fail,) = failures(check_models(model_cfg(tiny_bundle, motion_module=str(tiny_bundle["motion_v3"])),
                                    extras=False))
    assert fail.startswith("model.motion_loras[0]") and "v2" in fail


@pytest.mark.parametrize("strength", [-0.1, 2.5])
def test_motion_lora_strength_range(tiny_bundle, strength):
    (fail,) = failures(inspect_model(model_cfg(tiny_bundle, motion_loras=[
        {"path": str(tiny_bundle["motion_lora"]), "strength": strength}])))
    assert fail.startswith("model.motion_loras[0].strength") and f"{strength} not in [0, 2]" in fail


# --- embeddings ----------------------------------------------------------------------------------------------------


@pytest.fixture
def identities(tiny_bundle, tmp_path) -> Path:
    folder = tmp_path / "embeddings"
    shutil.copytree(tiny_bundle["embedding"].parent, folder)
    return folder


def test_embedding_of_wrong_width_is_named(tiny_bundle, identities):
    save_embedding(identities / "sdxl_person.pt", torch.zeros(4, 1280), "sdxl_person")
    (fail,) = failures(check_models(model_cfg(tiny_bundle, embeddings_dir=str(identities)), extras=False))
    assert "sdxl_person.pt" in fail and "width 1280, the text encoder 32" in fail


@pytest.mark.parametrize("name,vectors,message", [
    ("empty", torch.zeros(0, 32), "0 tokens"),
    ("nan", torch.full((4, 32), float("nan")), "NaN or infinite values"),
    ("inf", torch.tensor([[float("inf")] * 32]), "NaN or infinite values"),
])
def test_unusable_embeddings_fail(identities, name, vectors, message):
    save_embedding(identities / f"{name}.pt", vectors, name)
    report = Report()
    found = inspect_embeddings(identities, None, 32, report)
    assert set(found) == {"tinyperson", "tinywoman", name}
    (fail,) = failures(report)
    assert fail.startswith(f"model.embeddings_dir {identities / f'{name}.pt'} identity {name!r}: {message}")


def test_names_select_identities(identities):
    save_embedding(identities / "broken.pt", torch.zeros(0, 32), "broken")
    report = Report()
    assert inspect_embeddings(identities, ["tinyperson"], 32, report) == {"tinyperson": identities / "tinyperson.pt"}
    assert report.ok, report.table()
    inspect_embeddings(identities, ["tinyperson", "nobody"], 32, report)
    (fail,) = failures(report)
    assert "unknown identity 'nobody'; available: broken, tinyperson, tinywoman" in fail


def test_identities_differing_only_by_case_fail(identities):
    save_embedding(identities / "Ann.pt", torch.zeros(2, 32), "Ann")
    save_embedding(identities / "ann.safetensors", torch.zeros(2, 32), "ann")
    report = Report()
    inspect_embeddings(identities, None, 32, report)
    (fail,) = failures(report)
    assert "Ann and ann differ only by case: the token <ann> would be ambiguous" in fail
    report = Report()
    inspect_embeddings(identities, ["tinyperson"], 32, report)
    assert report.ok, report.table()


# --- the doctor script -------------------------------------------------------------------------------------------


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
