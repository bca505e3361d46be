"""magicme.parity makes diffusers' UNetMotionModel compute the original AnimateDiff math.

The reference (tests/animatediff_reference.py) re-implements the original motion module and the original GroupNorm
placement from their definitions and reads only weights from the diffusers modules; it never calls diffusers'
temporal transformer or GroupNorm. Everything runs in float64 on tiny random-weight UNets, so a correct patch
agrees to rounding (~1e-15) and a wrong one is off by several percent.
"""

import copy

import pytest
import torch
from torch import nn
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from magicme.errors import ConfigError
from magicme.parity import FramePooledGroupNorm, FramewiseGroupNorm, apply_animatediff_numerics
from tests.animatediff_reference import (
    CROSS_DIM, rel_err, reference_motion_module, reference_unet, tiny_inputs, tiny_sdxl_unet, tiny_unet,
)
from magicme.tiny.sdxl import TEXT_WIDTHS

VERSIONS = ("v1", "v2", "v3")
FRAMES = 8
PARITY_TOL = 1e-10  # float64 rounding is ~1e-15
STOCK_GAP = 0.01  # stock diffusers is 15-25 % off on these weights; a no-op patch would fail loudly


@pytest.fixture(scope="module")
def stock_unets() -> dict:
    return {v: tiny_unet(v) for v in VERSIONS}


def patched(unet, version: str, mode: str = "original"):
    unet = copy.deepcopy(unet)
    apply_animatediff_numerics(unet, version, mode)
    return unet


@torch.no_grad()
def run(unet, inputs: dict) -> torch.Tensor:
    return unet(**inputs).sample


def motion_modules(unet) -> list[tuple[str, AnimateDiffTransformer3D]]:
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, AnimateDiffTransformer3D)]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_motion_module_matches_the_original(stock_unets, version):
    stock = stock_unets[version]
    unet = patched(stock, version)
    names = [n for n, _ in motion_modules(unet)]
    assert ("mid_block.motion_modules.0" in names) == (version == "v2")
    generator = torch.Generator().manual_seed(5)
    for (name, module), (_, stock_module) in zip(motion_modules(unet), motion_modules(stock)):
        channels = module.proj_in.in_features
        # (B·F, C, H, W) with B = 2 and a different offset per frame, so per-frame and pooled statistics differ
        x = torch.randn(2 * FRAMES, channels, 4, 4, generator=generator, dtype=torch.float64)
        x = x + torch.linspace(-1.0, 1.0, FRAMES, dtype=torch.float64).repeat(2)[:, None, None, None]
        with torch.no_grad():
            expected = reference_motion_module(module, x, FRAMES)
            assert rel_err(module(x, num_frames=FRAMES), expected) <= PARITY_TOL, name
            assert rel_err(stock_module(x, num_frames=FRAMES), expected) > STOCK_GAP, name


@pytest.mark.parametrize("version", VERSIONS)
def test_whole_unet_matches_the_original(stock_unets, version):
    """v1's reference pools the resnet and output GroupNorms over frames; v2/v3's normalise per frame."""
    stock = stock_unets[version]
    inputs = tiny_inputs(batch=1, frames=FRAMES)
    expected = run(reference_unet(stock, FRAMES, pooled_norms=version == "v1"), inputs)
    assert rel_err(run(patched(stock, version), inputs), expected) <= PARITY_TOL
    assert rel_err(run(stock, inputs), expected) > STOCK_GAP


def test_v1_cfg_batch_keeps_each_video_separate(stock_unets):
    """CFG doubles the batch: each video must keep its own pooled statistics."""
    stock = stock_unets["v1"]
    unet = patched(stock, "v1")
    inputs = tiny_inputs(batch=2, frames=FRAMES)
    out = run(unet, inputs)
    assert rel_err(out, run(reference_unet(stock, FRAMES, pooled_norms=True), inputs)) <= PARITY_TOL
    for i in range(2):
        one = {"sample": inputs["sample"][i:i + 1], "timestep": inputs["timestep"],
               "encoder_hidden_states": inputs["encoder_hidden_states"][i * FRAMES:(i + 1) * FRAMES]}
        assert rel_err(out[i:i + 1], run(unet, one)) <= PARITY_TOL


def test_v1_frame_count_is_per_call_and_cleared(stock_unets):
    stock = stock_unets["v1"]
    unet = patched(stock, "v1")
    for frames in (FRAMES, 4, FRAMES):
        inputs = tiny_inputs(batch=1, frames=frames)
        expected = run(reference_unet(stock, frames, pooled_norms=True), inputs)
        assert rel_err(run(unet, inputs), expected) <= PARITY_TOL
    norm = unet.conv_norm_out
    assert isinstance(norm, FramePooledGroupNorm) and norm.frame_count.frames is None
    with pytest.raises(RuntimeError, match="frame count"):
        norm(torch.zeros(FRAMES, 32, 8, 8, dtype=torch.float64))
    bad = dict(tiny_inputs(batch=1, frames=FRAMES), encoder_hidden_states=torch.zeros(1, 5, 7, dtype=torch.float64))
    with pytest.raises(RuntimeError):
        run(unet, bad)
    assert norm.frame_count.frames is None  # cleared even when the forward raised


def test_v1_gradient_checkpointing_fails_loudly(stock_unets):
    """Checkpoint recomputation runs after the forward call: the pooled norm must refuse, not guess F."""
    unet = patched(stock_unets["v1"], "v1")
    unet.enable_gradient_checkpointing()
    unet.train()
    out = unet(**tiny_inputs(batch=1, frames=4)).sample
    with pytest.raises(RuntimeError, match="model.animatediff_numerics: diffusers"):
        out.sum().backward()


def test_deepcopy_of_a_patched_v1_unet_works(stock_unets):
    stock = stock_unets["v1"]
    unet = copy.deepcopy(patched(stock, "v1"))
    assert unet.conv_norm_out.frame_count is unet.down_blocks[0].resnets[0].norm1.frame_count
    inputs = tiny_inputs(batch=1, frames=FRAMES)
    assert rel_err(run(unet, inputs), run(reference_unet(stock, FRAMES, pooled_norms=True), inputs)) <= PARITY_TOL


@pytest.mark.parametrize("version", VERSIONS)
def test_diffusers_mode_is_stock_diffusers_exactly(stock_unets, version):
    stock = stock_unets[version]
    inputs = tiny_inputs(batch=2, frames=FRAMES)
    expected = run(stock, inputs)
    assert torch.equal(run(patched(stock, version, "diffusers"), inputs), expected)
    switched_back = patched(patched(stock, version), version, "diffusers")
    assert torch.equal(run(switched_back, inputs), expected)
    assert all(type(m) is nn.GroupNorm for m in switched_back.modules() if isinstance(m, nn.GroupNorm))
    assert not switched_back.down_blocks[0]._forward_pre_hooks and not switched_back._forward_hooks


@pytest.mark.parametrize("version", VERSIONS)
def test_idempotent_and_keeps_parameters(stock_unets, version):
    stock = stock_unets[version]
    once = patched(stock, version)
    twice = patched(once, version)
    inputs = tiny_inputs(batch=1, frames=FRAMES)
    assert torch.equal(run(twice, inputs), run(once, inputs))
    hooks = 1 if version == "v1" else 0
    assert len(twice.down_blocks[0]._forward_pre_hooks) == hooks and len(twice._forward_hooks) == hooks

    state = twice.state_dict()
    assert list(state) == list(stock.state_dict())
    assert all(torch.equal(state[k], v) for k, v in stock.state_dict().items())
    twice.load_state_dict(stock.state_dict(), strict=True)

    # 8 resnets × (norm1, norm2) + conv_norm_out: pooled in v1, stock (per frame) in v2/v3. The spatial
    # transformers' GroupNorms stay stock: per frame in the original too.
    spatial = {id(m.norm) for m in twice.modules() if isinstance(m, Transformer2DModel)}
    plain = [m for m in twice.modules() if type(m) is nn.GroupNorm and id(m) not in spatial]
    pooled = [m for m in twice.modules() if isinstance(m, FramePooledGroupNorm)]
    assert (len(pooled), len(plain)) == ((17, 0) if version == "v1" else (0, 17))
    resnet_norm = next(m for m in twice.modules() if isinstance(m, ResnetBlock2D)).norm1
    assert type(resnet_norm) is (FramePooledGroupNorm if version == "v1" else nn.GroupNorm)
    assert all(isinstance(m.norm, FramewiseGroupNorm) for _, m in motion_modules(twice))
    twice.to(torch.float32)
    assert resnet_norm.weight.dtype == torch.float32
    out = run(twice, {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()})
    assert rel_err(out.double(), run(once, inputs)) < 1e-4


def test_bad_arguments_raise_config_error(stock_unets):
    unet = copy.deepcopy(stock_unets["v2"])
    with pytest.raises(ConfigError, match="motion module version"):
        apply_animatediff_numerics(unet, "v4")
    with pytest.raises(ConfigError, match="model.animatediff_numerics"):
        apply_animatediff_numerics(unet, "v2", "exact")


def test_sdxl_stock_diffusers_is_the_original_sdxl_code():
    """The AnimateDiff SD-XL branch (guoyww/AnimateDiff@sdxl, animatediff/models/motion_module.py) applies its
    motion-module GroupNorm to the (B, C, F, H, W) video, pooling over frames, and runs every 2D layer per frame:
    what stock diffusers computes. So SD-XL needs no patch (and must not get SD1.5's per-frame one): stock
    diffusers equals the reference to rounding, the SD1.5 convention is far off."""
    stock = tiny_sdxl_unet()
    generator = torch.Generator().manual_seed(3)
    inputs = tiny_inputs(batch=2, frames=FRAMES)
    inputs["encoder_hidden_states"] = torch.randn(2 * FRAMES, 5, sum(TEXT_WIDTHS), generator=generator,
                                                  dtype=torch.float64)
    inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, TEXT_WIDTHS[1], generator=generator,
                                                              dtype=torch.float64),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64], [48, 80, 8, 0, 64, 64]],
                                                            dtype=torch.float64)}
    assert CROSS_DIM != sum(TEXT_WIDTHS)  # the SD-XL UNet reads both encoders' widths
    expected = run(reference_unet(stock, FRAMES, pooled_norms=False, pooled_motion_norm=True), inputs)
    assert rel_err(run(stock, inputs), expected) <= PARITY_TOL
    sd15_convention = run(reference_unet(stock, FRAMES, pooled_norms=False, pooled_motion_norm=False), inputs)
    assert rel_err(sd15_convention, expected) > STOCK_GAP
