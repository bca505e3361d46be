"""Full-size SD-XL formats: a single file in the layout of `sd_xl_base_1.0.safetensors` (UNet 320/640/1280 with
text_time conditioning, CLIP-L and OpenCLIP bigG text encoders, SD-XL VAE) and a full-size SDXL motion module in
the original AnimateDiff layout (`mm_sdxl_v10_beta.ckpt`'s shapes) load through magicme.families.sdxl — the path
real downloads take — with every tensor in its place; the video UNet carries every 2D weight, `add_embedding`
included. The component configs are SD-XL base 1.0's (configs/models/sdxl).

Slow (minutes, ~20 GB of memory at the peak, ~8 GB in a temp folder); deselected by default:

    python -m pytest -m slow tests/test_fullsize_sdxl.py -s
"""

import shutil
import time
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from magicme.families.sdxl import load_base
from magicme.inspector import inspect_model
from magicme.motion_module import load_motion_adapter, motion_unet
from magicme.schema import model_config
from magicme.tiny.ldm import save_sdxl_ldm_checkpoint
from magicme.tiny.motion import save_original_motion_module
from magicme.tiny.sd import save_tiny_tokenizer

pytestmark = pytest.mark.slow
SDXL = Path(__file__).resolve().parents[1] / "configs" / "models" / "sdxl"


def shapes_of(module_factory) -> dict[str, torch.Size]:
    with init_empty_weights():
        module = module_factory()
    return {k: v.shape for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def mark(key_index: int, offset: int) -> float:
    """The constant of a key's tensor (i/64 over 64 values), so a tensor loaded into the wrong place shows."""
    return ((offset + key_index) % 64) / 64


def marked(shapes: dict[str, torch.Size], offset: int, dtype=torch.float16) -> dict[str, torch.Tensor]:
    return {k: torch.full(shape, mark(i, offset), dtype=dtype) for i, (k, shape) in enumerate(shapes.items())}


def misplaced(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size], offset: int) -> list[str]:
    """Keys of `shapes` whose tensor in `state` is missing or not its constant."""
    return [k for i, k in enumerate(shapes)
            if k not in state or state[k].shape != shapes[k] or not bool((state[k] == mark(i, offset)).all())]


@pytest.fixture(scope="module")
def fullsize(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullsize-xl")
    config = root / "sdxl"
    shutil.copytree(SDXL, config)
    for name in ("tokenizer", "tokenizer_2"):  # single-file loading takes the tokenizers from base_config
        save_tiny_tokenizer(config / name)
    shapes = {
        "unet": shapes_of(lambda: UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(config, subfolder="unet"))),
        "vae": shapes_of(lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(config, subfolder="vae"))),
        "text_encoder": shapes_of(lambda: CLIPTextModel(
            CLIPTextConfig.from_pretrained(config, subfolder="text_encoder"))),
        "text_encoder_2": shapes_of(lambda: CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(config, subfolder="text_encoder_2"))),
    }
    start = time.perf_counter()
    base = save_sdxl_ldm_checkpoint(*(marked(shapes[name], i) for i, name in enumerate(shapes)),
                                    root / "base" / "sd_xl_base_1.0.safetensors")
    with init_empty_weights():
        adapter = MotionAdapter(block_out_channels=(320, 640, 1280), motion_layers_per_block=2,
                                motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
                                use_motion_mid_block=False)
    adapter.to_empty(device="cpu")
    shapes["motion"] = {k: v.shape for k, v in adapter.state_dict().items()}
    adapter.load_state_dict(marked(shapes["motion"], 4, torch.float32))
    motion = save_original_motion_module(adapter, root / "motion_module" / "mm_sdxl_v10_beta.ckpt")
    print(f"\nwrote full-size SD-XL files in {time.perf_counter() - start:.1f} s "
          f"({base.stat().st_size / 1e9:.1f} GB + {motion.stat().st_size / 1e9:.1f} GB)")
    return {"config": config, "base": base, "motion": motion, "shapes": shapes}


def test_single_file_sdxl_base_loads_every_tensor_in_place(fullsize):
    start = time.perf_counter()
    base = load_base(str(fullsize["base"]), str(fullsize["config"]), torch.float16)
    print(f"\nload_base (SD-XL single file): {time.perf_counter() - start:.1f} s")
    for offset, name in enumerate(("unet", "vae", "text_encoder", "text_encoder_2")):
        wrong = misplaced(getattr(base, name).state_dict(), fullsize["shapes"][name], offset)
        assert not wrong, f"{name}: {len(wrong)} tensors misplaced, e.g. {wrong[:3]}"


def test_full_size_sdxl_motion_module_and_video_unet(fullsize):
    """The SDXL module in the original layout reads as SD-XL's; the video UNet built from the full-size base carries
    every 2D weight (SD-XL's add_embedding too) and every motion weight."""
    adapter, info = load_motion_adapter(fullsize["motion"], family="sdxl")
    assert (info.family, info.block_out_channels, info.layers_per_block, info.max_seq_length, info.mid_block) == \
        ("sdxl", (320, 640, 1280), 2, 32, False)
    wrong = [k for k in misplaced(adapter.state_dict(), fullsize["shapes"]["motion"], 4) if not k.endswith(".pe")]
    assert not wrong, f"{len(wrong)} motion tensors misplaced, e.g. {wrong[:3]}"
    base = load_base(str(fullsize["base"]), str(fullsize["config"]), torch.float16)
    start = time.perf_counter()
    unet = motion_unet(base.unet, adapter.to(torch.float16)).state_dict()
    print(f"\nmotion_unet (full-size SD-XL): {time.perf_counter() - start:.1f} s")
    wrong = misplaced(unet, fullsize["shapes"]["unet"], 0)
    assert not wrong and "add_embedding.linear_1.weight" in fullsize["shapes"]["unet"], wrong[:3]


def test_inspector_reads_the_full_size_sdxl_files(fullsize):
    report = inspect_model(model_config({"family": "sdxl", "base": str(fullsize["base"]),
                                         "base_config": str(fullsize["config"]),
                                         "motion_module": str(fullsize["motion"])}))
    assert report.ok, report.table()
    assert "text width 768 + 1280" in report.table()
