"""The single-file LDM writer (magicme/tiny/ldm.py) is exact: tiny components → LDM file → diffusers'
`from_single_file` → every tensor equal to the original, nothing missing, nothing left over."""

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
)
from safetensors import safe_open

from magicme.tiny.ldm import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, ldm_state_dict, save_ldm_checkpoint


def assert_same_tensors(loaded: dict, original: dict, what: str) -> None:
    assert set(loaded) == set(original), f"{what}: missing {set(original) - set(loaded)}, " \
                                         f"unexpected {set(loaded) - set(original)}"
    for key, value in original.items():
        assert torch.equal(loaded[key].float(), value.float()), f"{what}: {key} differs"


def persistent(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


@pytest.fixture(scope="module")
def tiny_sd(tiny_bundle):
    return tiny_bundle["sd15"]


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip_is_exact(tiny_sd, tmp_path, suffix):
    original = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
    path = save_ldm_checkpoint(original.unet, original.vae, original.text_encoder, tmp_path / f"model{suffix}")
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(tiny_sd), local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_tensors(persistent(getattr(loaded, name).state_dict()),
                            persistent(getattr(original, name).state_dict()), name)
        assert not any(p.is_meta for p in getattr(loaded, name).parameters()), f"{name}: weights left unloaded"


def test_file_has_the_community_checkpoint_layout(tiny_sd, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    path = save_ldm_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, tmp_path / "model.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        attn_q = f.get_slice(VAE_PREFIX + "encoder.mid.attn_1.q.weight").get_shape()
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)) for k in keys)
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.middle_block.2.out_layers.3.weight",
                "first_stage_model.encoder.down.0.block.0.norm1.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        assert key in keys, key
    assert len(attn_q) == 4  # 1×1 convolutions, as LDM stored them


@pytest.mark.parametrize("layers, channels, down, up", [
    (1, (32, 64, 64), ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
     ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    (3, (32, 32), ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")),
])
def test_unet_renamer_inverts_diffusers_reader_for_any_depth(layers, channels, down, up):
    """diffusers' own LDM→diffusers converter, applied to our file's keys, gives back exactly the UNet's keys."""
    unet = UNet2DConditionModel(sample_size=8, layers_per_block=layers, block_out_channels=channels,
                                down_block_types=down, up_block_types=up, cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=16)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=layers, norm_num_groups=16)
    ldm = ldm_state_dict(unet.state_dict(), vae.state_dict(), {})
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert_same_tensors(back, unet.state_dict(), "unet")
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert_same_tensors(back, vae.state_dict(), "vae")


def test_text_encoder_keys_match_the_ldm_reader(tiny_sd):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    state = persistent(pipe.text_encoder.state_dict())
    back = convert_ldm_clip_checkpoint(ldm_state_dict({}, {}, state))
    assert {k.removeprefix("text_model.") for k in back} == set(state)


def test_config_folder_is_all_single_file_loading_needs(tiny_sd, tmp_path):
    """The weights come from the file alone: a config folder without any weight file still loads it."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    path = save_ldm_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, tmp_path / "model.safetensors")
    configs = tmp_path / "configs"
    shutil.copytree(tiny_sd, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert json.loads((configs / "unet" / "config.json").read_text())["layers_per_block"] == 2
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(configs), local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    assert torch.equal(loaded.unet.conv_out.weight, pipe.unet.conv_out.weight)
