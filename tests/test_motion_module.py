import json

import pytest
import torch
from diffusers import UNetMotionModel

from magicme.errors import ConfigError
from magicme.inspector import lora_target_weights, motion_info_from_config, tensor_shapes
from magicme.motion_module import (
    inspect_motion_module,
    load_motion_adapter,
    lora_targets,
    merge_motion_lora,
    read_state_dict,
)
from magicme.tiny.sd import tiny_motion_adapter, tiny_unet


@pytest.mark.parametrize("version,max_len,mid", [("v1", 24, False), ("v2", 32, True), ("v3", 32, False)])
def test_version_detection_from_original_files(tiny_bundle, version, max_len, mid):
    state = read_state_dict(tiny_bundle[f"motion_{version}"])
    assert all(".temporal_transformer." in k for k in state)  # the original layout, not diffusers'
    info = inspect_motion_module(state)
    assert (info.version, info.max_seq_length, info.mid_block) == (version, max_len, mid)
    assert info.block_out_channels == (32, 64) and info.layers_per_block == 2
    assert inspect_motion_module(tensor_shapes(tiny_bundle[f"motion_{version}"])) == info  # from header shapes alone


def test_original_file_round_trips_into_a_motion_adapter(tiny_bundle):
    torch.manual_seed(0)
    adapter, info = load_motion_adapter(tiny_bundle["motion_v2"])
    raw = read_state_dict(tiny_bundle["motion_v2"])
    key = "down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_v.weight"
    original = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_v.weight"
    assert torch.equal(adapter.state_dict()[key], raw[original])
    pe = raw["mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"]
    assert torch.allclose(adapter.state_dict()["mid_block.motion_modules.0.transformer_blocks.0.pos_embed.pe"], pe)


def test_diffusers_motion_adapter_folder(tmp_path):
    tiny_motion_adapter("v3").save_pretrained(tmp_path / "adapter")
    _, info = load_motion_adapter(tmp_path / "adapter")
    assert info.version == "v3" and not info.mid_block
    assert info == motion_info_from_config(json.loads((tmp_path / "adapter" / "config.json").read_text()))


def test_not_a_motion_module(tiny_bundle, tmp_path):
    with pytest.raises(ConfigError, match="not an AnimateDiff motion module; it looks like a MotionLoRA"):
        load_motion_adapter(tiny_bundle["motion_lora"])
    with pytest.raises(ConfigError, match="not an AnimateDiff motion module"):
        inspect_motion_module({"string_to_param": torch.zeros(1)}, "x.pt")
    (tmp_path / "broken.ckpt").write_bytes(b"\x00" * 10)
    with pytest.raises(ConfigError, match="broken.ckpt: not a readable checkpoint"):
        load_motion_adapter(tmp_path / "broken.ckpt")
    with pytest.raises(ConfigError, match="file not found"):
        load_motion_adapter(tmp_path / "missing.ckpt")


def test_sdxl_module_is_rejected(tmp_path):
    state = {f"down_blocks.{i}.motion_modules.0.temporal_transformer.norm.weight": torch.zeros(320) for i in range(3)}
    assert inspect_motion_module(state).family == "sdxl"
    torch.save(state, tmp_path / "mm_sdxl.ckpt")
    with pytest.raises(ConfigError, match="an SDXL motion module, but model.family is sd15"):
        load_motion_adapter(tmp_path / "mm_sdxl.ckpt")


def test_motion_lora_merge_is_exact(tiny_bundle):
    adapter, _ = load_motion_adapter(tiny_bundle["motion_v2"])
    unet = UNetMotionModel.from_unet2d(tiny_unet(), adapter)
    key = "up_blocks.1.motion_modules.2.transformer_blocks.0.attn1.to_out.0.weight"
    before = unet.state_dict()[key].clone()
    count = merge_motion_lora(unet, tiny_bundle["motion_lora"], 0.6)
    lora = read_state_dict(tiny_bundle["motion_lora"])
    prefix = "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor"
    delta = lora[f"{prefix}.to_out_lora.up.weight"] @ lora[f"{prefix}.to_out_lora.down.weight"]
    assert torch.allclose(unet.state_dict()[key], before + 0.6 * delta, atol=1e-6)
    assert count == len(lora) // 2


def test_v2_lora_does_not_fit_v3_module(tiny_bundle):
    adapter, _ = load_motion_adapter(tiny_bundle["motion_v3"])
    unet = UNetMotionModel.from_unet2d(tiny_unet(), adapter)
    with pytest.raises(ConfigError, match="does not fit the loaded motion module"):
        merge_motion_lora(unet, tiny_bundle["motion_lora"], 1.0)


def test_lora_targets_are_original_weights_under_diffusers_names(tiny_bundle):
    """The inspector's original-layout targets and the loader's diffusers names describe the same weights."""
    lora = read_state_dict(tiny_bundle["motion_lora"])
    module = read_state_dict(tiny_bundle["motion_v2"])
    original = lora_target_weights(lora)
    assert set(original) <= set(module) and len(original) == len(lora) // 2
    prefix = "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.0"
    assert original[f"{prefix}.to_out.0.weight"] == (f"{prefix}.processor.to_out_lora.down.weight",
                                                     f"{prefix}.processor.to_out_lora.up.weight")
    diffusers_names = lora_targets(lora)
    assert sorted(diffusers_names.values()) == sorted(original.values())
    assert "up_blocks.1.motion_modules.2.transformer_blocks.0.attn1.to_out.0.weight" in diffusers_names
