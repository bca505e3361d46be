"""Full-size file formats: an SD1.5-shaped single-file LDM checkpoint (UNet 320/640/1280/1280, CLIP-L text encoder,
SD VAE) and a full-size v2 motion module in the original AnimateDiff layout load through magicme.families.sd15 — the path
real downloads take — with every tensor in its place and none missing or left over.

Slow (minutes, ~10 GB of memory, ~4 GB in a temp folder); deselected by default:

    python -m pytest -m slow tests/test_fullsize_formats.py -s
"""

import shutil
import time
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel

from magicme.families.sd15 import load, load_base
from magicme.inspector import inspect_model
from magicme.schema import model_config
from magicme.motion_module import load_motion_adapter
from magicme.tiny.ldm import ldm_state_dict, save_ldm_checkpoint
from magicme.tiny.motion import save_original_motion_module
from magicme.tiny.sd import save_tiny_tokenizer

pytestmark = pytest.mark.slow
SD15 = Path(__file__).resolve().parents[1] / "configs" / "models" / "sd15"


def shapes_of(module_factory) -> dict[str, torch.Size]:
    with init_empty_weights():
        module = module_factory()
    return {k: v.shape for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def marked(shapes: dict[str, torch.Size], offset: int, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """A constant tensor per key, the constant telling keys apart (i/64 over 64 values), so a tensor loaded into
    the wrong place shows."""
    return {k: torch.full(shape, ((offset + i) % 64) / 64, dtype=dtype) for i, (k, shape) in enumerate(shapes.items())}


@pytest.fixture(scope="module")
def fullsize(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullsize")
    config = root / "sd15"
    shutil.copytree(SD15, config)
    save_tiny_tokenizer(config / "tokenizer")  # single-file loading takes the tokenizer from base_config
    text_config = CLIPTextConfig.from_pretrained(config, subfolder="text_encoder")
    parts = {
        "unet": marked(shapes_of(lambda: UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(config, subfolder="unet"))), 0),
        "vae": marked(shapes_of(lambda: AutoencoderKL.from_config(
            AutoencoderKL.load_config(config, subfolder="vae"))), 1),
        "text_encoder": marked(shapes_of(lambda: CLIPTextModel(text_config)), 2),
    }
    start = time.perf_counter()
    base = save_ldm_checkpoint(parts["unet"], parts["vae"], parts["text_encoder"],
                               root / "base" / "Realistic_Vision_V5.1_noVAE.safetensors")
    with init_empty_weights():
        adapter = MotionAdapter(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                                motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                                use_motion_mid_block=True)
    adapter.to_empty(device="cpu")
    motion_values = marked({k: v.shape for k, v in adapter.state_dict().items()}, 3, torch.float32)
    adapter.load_state_dict(motion_values)
    motion = save_original_motion_module(adapter, root / "motion_module" / "mm_sd_v15_v2.ckpt")
    print(f"\nwrote full-size files in {time.perf_counter() - start:.1f} s")
    return {"config": config, "base": base, "motion": motion, "parts": parts, "motion_values": motion_values}


def test_ldm_file_keys_match_diffusers_models_exactly(fullsize):
    from safetensors import safe_open

    with safe_open(str(fullsize["base"]), "pt") as f:
        ldm = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    assert ldm.keys() == ldm_state_dict(*fullsize["parts"].values()).keys()
    unet_config = UNet2DConditionModel.load_config(fullsize["config"], subfolder="unet")
    vae_config = AutoencoderKL.load_config(fullsize["config"], subfolder="vae")
    assert set(convert_ldm_unet_checkpoint(ldm, unet_config)) == set(fullsize["parts"]["unet"])
    assert set(convert_ldm_vae_checkpoint(ldm, vae_config)) == set(fullsize["parts"]["vae"])


def test_single_file_base_loads_every_tensor_in_place(fullsize):
    start = time.perf_counter()
    base = load_base(str(fullsize["base"]), str(fullsize["config"]), torch.float16)
    print(f"\nload_base (single file, fp16): {time.perf_counter() - start:.1f} s")
    for name in ("unet", "vae", "text_encoder"):
        loaded = {k: v for k, v in getattr(base, name).state_dict().items() if not k.endswith("position_ids")}
        expected = fullsize["parts"][name]
        assert loaded.keys() == expected.keys(), name
        assert not any(p.is_meta for p in getattr(base, name).parameters()), f"{name}: weights left unloaded"
        wrong = [k for k, v in expected.items() if not torch.equal(loaded[k].to(v.dtype), v)]
        assert not wrong, f"{name}: {len(wrong)} tensors differ, e.g. {wrong[:3]}"
    assert tuple(base.unet.config.block_out_channels) == (320, 640, 1280, 1280)
    assert base.text_encoder.config.hidden_size == 768


def test_full_size_v2_motion_module_loads_without_missing_keys(fullsize):
    start = time.perf_counter()
    adapter, info = load_motion_adapter(fullsize["motion"])
    print(f"\nload_motion_adapter (v2, 1.8 GB .ckpt): {time.perf_counter() - start:.1f} s")
    assert (info.version, info.block_out_channels, info.layers_per_block, info.max_seq_length) == \
        ("v2", (320, 640, 1280, 1280), 2, 32)
    state = adapter.state_dict()
    # the original files' `pos_encoder.pe` buffers are dropped on load: diffusers rebuilds the same sinusoids
    wrong = [k for k, v in fullsize["motion_values"].items()
             if not k.endswith("pos_embed.pe") and not torch.equal(state[k], v)]
    assert not wrong, f"{len(wrong)} motion tensors differ, e.g. {wrong[:3]}"


def test_doctor_and_pipeline_on_full_size_files(fullsize):
    model = model_config({"base": str(fullsize["base"]), "base_config": str(fullsize["config"]),
                          "motion_module": str(fullsize["motion"]), "embeddings_dir": None})
    start = time.perf_counter()
    report = inspect_model(model)
    print(f"\ninspector: {time.perf_counter() - start:.1f} s")
    assert report.ok, report.table()
    start = time.perf_counter()
    pipe = load(model, device="cpu", precision="fp16")
    print(f"load (full size, fp16, CPU): {time.perf_counter() - start:.1f} s")
    assert pipe.motion_version == "v2" and pipe.max_frames == 32
    unet = pipe.t2v.unet
    assert not any(p.is_meta for p in unet.parameters())
    assert torch.equal(unet.conv_in.weight.float(), fullsize["parts"]["unet"]["conv_in.weight"].float())
