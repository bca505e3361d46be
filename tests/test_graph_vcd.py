"""The Magic-Me ComfyUI graph's VCD pieces: FreeU (v1 / v2), masked face inpainting and its blurred paste mask,
contrast-adaptive sharpening, tiles denoised at the tile size, stage schedulers and the schedule-length check.

Reference formulas here are written independently from the ComfyUI node descriptions (docs/vcd.md), not by
calling magicme's own helpers."""

import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from scipy import ndimage
from skimage import data as skdata

from magicme.errors import ConfigError
from magicme.faces import DlibFaces
from magicme.freeu import freeu, install_freeu
from magicme.schema import check_settings, load_sample_config
from magicme.stages import STAGES, Sample
from magicme.stages.tiled import tile_size
from magicme.vcd.geometry import blurred_mask
from magicme.vcd.resize import resize_video
from magicme.vcd.sharpen import cas_sharpen


# --------------------------------------------------------------------------------------------------------- FreeU

def comfy_freeu(h: torch.Tensor, hsp: torch.Tensor, b: float, s: float, version: int):
    """ComfyUI's output-block patch, transcribed from its description: first half of h's channels × b (v1) or
    × ((b − 1)·m + 1) with m the per-sample channel-mean map min-max normalised (v2); the 2×2 centre of the
    shifted spectrum of hsp × s."""
    h = h.clone()
    half = h.shape[1] // 2
    if version == 1:
        h[:, :half] = h[:, :half] * b
    else:
        m = h.mean(1).unsqueeze(1)
        lo = m.view(m.shape[0], -1).min(dim=-1).values.view(-1, 1, 1, 1)
        hi = m.view(m.shape[0], -1).max(dim=-1).values.view(-1, 1, 1, 1)
        h[:, :half] = h[:, :half] * ((b - 1) * ((m - lo) / (hi - lo)) + 1)
    spectrum = torch.fft.fftshift(torch.fft.fftn(hsp.float(), dim=(-2, -1)), dim=(-2, -1))
    gain = torch.ones_like(spectrum.real)
    cy, cx = hsp.shape[-2] // 2, hsp.shape[-1] // 2
    gain[..., cy - 1:cy + 1, cx - 1:cx + 1] = s
    hsp = torch.fft.ifftn(torch.fft.ifftshift(spectrum * gain, dim=(-2, -1)), dim=(-2, -1)).real.to(hsp.dtype)
    return h, hsp


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_matches_comfyuis_formula_on_random_features(version):
    gen = torch.Generator().manual_seed(version)
    h, skip = torch.randn(3, 8, 6, 10, generator=gen), torch.randn(3, 4, 6, 10, generator=gen)
    ours, reference = freeu(h, skip, 1.3, 0.4, version), comfy_freeu(h, skip, 1.3, 0.4, version)
    assert torch.allclose(ours[0], reference[0], rtol=0, atol=1e-6)
    assert torch.allclose(ours[1], reference[1], rtol=0, atol=1e-6)
    assert not torch.allclose(ours[0], h) and not torch.allclose(ours[1], skip)
    if version == 2:  # the factor follows the image: per sample (= per frame of a video), not one constant
        assert not torch.allclose(ours[0][:, :4] / h[:, :4], torch.full_like(h[:, :4], 1.3))


def test_freeu_at_one_is_bit_identical_to_no_freeu():
    h, skip = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    same_h, same_skip = freeu(h, skip, 1.0, 1.0, 2)
    assert torch.equal(same_h, h) and torch.equal(same_skip, skip)


def test_install_freeu_patches_the_decoder_concatenations_by_channel_count():
    """A 3-level UNet (base 16: 64 / 32 / 16 channels): every decoder resnet whose backbone input has 4× the base
    channels gets (b1, s1), 2× gets (b2, s2), others nothing — seen from the resnets' actual inputs."""
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32, 64), layers_per_block=1, cross_attention_dim=8,
        norm_num_groups=8, attention_head_dim=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ).eval()
    inputs, skips = [], {}
    for block in unet.up_blocks:
        block.register_forward_pre_hook(
            lambda m, a, k: skips.__setitem__(id(m), [t.shape[1] for t in k["res_hidden_states_tuple"]]),
            with_kwargs=True)
        for i, resnet in enumerate(block.resnets):
            resnet.register_forward_pre_hook(  # prepended: sees the input before FreeU
                lambda m, a, k, block=block, i=i: inputs.append((block, i, "before", (a or [None])[0] if "input_tensor" not in k else k["input_tensor"])),
                with_kwargs=True, prepend=True)
    b1, b2, s1, s2 = 1.5, 0.7, 0.5, 2.0
    install_freeu(unet, 2, b1, b2, s1, s2)
    for block in unet.up_blocks:
        for i, resnet in enumerate(block.resnets):  # registered after FreeU: sees what the resnet gets
            resnet.register_forward_pre_hook(
                lambda m, a, k, block=block, i=i: inputs.append((block, i, "after", (a or [None])[0] if "input_tensor" not in k else k["input_tensor"])),
                with_kwargs=True)
    with torch.no_grad():
        unet(torch.randn(2, 4, 16, 16), 10, encoder_hidden_states=torch.randn(2, 3, 8))
    patched = {64: 0, 32: 0}
    for (block, i, _, before), (_, _, _, after) in zip(inputs[::2], inputs[1::2]):
        skip_channels = skips[id(block)][len(skips[id(block)]) - 1 - i]
        h, skip = before[:, :-skip_channels], before[:, -skip_channels:]
        scale = {64: (b1, s1), 32: (b2, s2)}.get(h.shape[1])
        expected = torch.cat(comfy_freeu(h, skip, *scale, 2), 1) if scale else before
        assert torch.allclose(after, expected, atol=1e-5)
        if scale:
            patched[h.shape[1]] += 1
    assert patched == {64: 3, 32: 2}  # up block 0: 64, 64; block 1: 64, 32; block 2: 32, 16 (untouched)


def test_freeu_settings_are_checked_before_loading():
    for override, key in (("freeu={version: 3}", "freeu.version"), ("freeu={b1: -1}", "freeu:")):
        with pytest.raises(ConfigError, match=key):
            check_settings(load_sample_config("configs/tiny/sample.yaml", [override]))


# ------------------------------------------------------------------------------------------- face masks, paste

def test_blurred_mask_is_the_impact_packs_gaussian_feather():
    mask = np.zeros((30, 40))
    mask[10:20, 12:25] = 1
    kernel = np.exp(-0.5 * (np.arange(-5, 6) / 10.0) ** 2)
    kernel /= kernel.sum()
    expected = ndimage.convolve1d(ndimage.convolve1d(mask, kernel, axis=0, mode="mirror"), kernel, axis=1,
                                  mode="mirror")
    ours = blurred_mask(mask, 5)
    assert np.allclose(ours, expected, atol=1e-6)
    reach = ndimage.binary_dilation(mask > 0, structure=np.ones((11, 11)))
    assert np.all(ours[~reach] == 0) and np.all(ours[reach] > 0)  # exactly 0 beyond `feather` px
    assert np.array_equal(blurred_mask(mask, 0), mask.astype(np.float32))
    small = np.zeros((6, 6))  # kernel 11 ≥ 6: shrinks to int(6 / 2) = 3, made odd = 3 taps, as the Impact Pack does
    small[2, 3] = 1
    three = np.exp(-0.5 * (np.arange(-1, 2) / 10.0) ** 2)
    three /= three.sum()
    assert np.allclose(blurred_mask(small, 5), np.outer(np.roll(np.pad(three, (0, 3)), 1),
                                                          np.roll(np.pad(three, (0, 3)), 2)), atol=1e-7)


def test_dlib_segment_is_the_landmark_hull_inside_the_face_box():
    photo = resize_video(np.stack([skdata.astronaut().astype(np.float32) / 255.0]), 256, 256)
    boxes, masks = DlibFaces(min_face=10, landmarks=True).segment(photo)
    (box,), mask = boxes[0], masks[0]
    x0, y0, x1, y1 = box
    assert 0.4 * (x1 - x0) * (y1 - y0) < mask.sum() < (x1 - x0) * (y1 - y0)  # a face-shaped region, not the box
    assert not mask[:y0].any() and not mask[y1:].any() and not mask[:, :x0].any() and not mask[:, x1:].any()


def test_masked_denoising_keeps_the_latents_outside_the_mask(tiny_pipeline):
    """After the last step the latents outside the mask are exactly the input's own (clean) latents; inside, new
    ones. The caller's own step callback still runs (and sees the masked latents)."""
    video = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1
    final = {}

    def spy(pipe, i, t, tensors):
        final["latents"] = tensors["latents"].clone()
        return tensors

    out = tiny_pipeline.video_to_video(video, "a photo", "", torch.Generator().manual_seed(0), gamma=0.1,
                                       strength=0.8, steps=3, guidance_scale=1.0, progress=False, mask=mask,
                                       callback_on_step_end=spy)
    clean = tiny_pipeline.encode_video(video)
    outside = tiny_pipeline.latent_mask(mask, clean.shape).expand_as(clean) == 0
    assert torch.equal(final["latents"][outside], clean[outside])
    assert not torch.allclose(final["latents"][~outside], clean[~outside])
    assert out.shape == video.shape


def test_segment_mask_needs_a_first_order_scheduler(tiny_pipeline):
    cfg = load_sample_config(None, ["face.detector=dlib", "face.scheduler=HeunDiscreteScheduler"])
    with pytest.raises(ConfigError, match="face.mask: segment .* first-order"):
        STAGES["face"](cfg).setup(tiny_pipeline)
    STAGES["face"](load_sample_config(None, ["face.detector=dlib", "face.scheduler=HeunDiscreteScheduler",
                                             "face.mask=box"])).setup(tiny_pipeline)


def test_stage_scheduler_is_used_for_the_call_and_the_models_comes_back(tiny_pipeline):
    stage = STAGES["tiled"](load_sample_config(None, ["steps=2", "tiled.tile=64", "tiled.scheduler=euler"]))
    stage.setup(tiny_pipeline)
    seen, own = [], tiny_pipeline.v2v.scheduler
    forward = tiny_pipeline.v2v.unet.forward
    tiny_pipeline.v2v.unet.forward = lambda *a, **k: seen.append(type(tiny_pipeline.v2v.scheduler).__name__) \
        or forward(*a, **k)
    try:
        stage(tiny_pipeline, np.full((2, 32, 32, 3), 0.5, np.float32), Sample(0, "a photo", "", 0, 0.1),
              torch.Generator())
    finally:
        del tiny_pipeline.v2v.unet.forward
    assert seen and set(seen) == {"EulerDiscreteScheduler"} and tiny_pipeline.v2v.scheduler is own


# ------------------------------------------------------------------------------------------------ tiles, sharpen

def test_tile_windows_are_denoised_at_the_tile_size():
    assert tile_size(544, 544, 512) == (512, 512)
    assert tile_size(544, 576, 512) == (480, 512)  # aspect kept, multiples of 8
    assert tile_size(64, 64, 128) == (128, 128)


class Recorder:
    """`video_to_video` as an identity, recording the sizes it is asked to denoise at."""

    device, family = torch.device("cpu"), "sd15"

    def __init__(self):
        self.sizes = []

    def video_to_video(self, video, *args, **kwargs):
        self.sizes.append(video.shape[1:3])
        return video.copy()


def test_tiled_stage_denoises_padded_windows_at_tile_size_and_sharpens():
    video = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
    plain = STAGES["tiled"](load_sample_config(None, ["tiled.tile=64", "tiled.padding=8"]))
    sharp = STAGES["tiled"](load_sample_config(None, ["tiled.tile=64", "tiled.padding=8", "tiled.sharpen=0.2"]))
    outputs = []
    for stage in (plain, sharp):
        pipe = Recorder()
        stage.setup(pipe)
        outputs.append(stage(pipe, video, Sample(0, "p", "", 0, 0.1), torch.Generator())[0])
        assert pipe.sizes == [(64, 64)] * 4  # 72² windows (64 + 8 px of context) denoised at 64²
    assert np.array_equal(outputs[1], cas_sharpen(outputs[0], 0.2))


def cas_pixel(n: list[list[float]], amount: float) -> float:
    """One output pixel of CAS from its 3×3 neighbourhood, by hand."""
    cross = [n[0][1], n[1][0], n[1][1], n[1][2], n[2][1]]
    diagonal = [n[0][0], n[0][2], n[2][0], n[2][2]]
    mn, mx = min(cross) + min(diagonal), max(cross) + max(diagonal)
    amp = math.sqrt(min(mn, 2 - mx) / (mx + 1e-5))
    w = -amp * (1 / 8 + amount * (1 / 5 - 1 / 8))
    return min(1.0, max(0.0, (w * (n[0][1] + n[1][0] + n[1][2] + n[2][1]) + n[1][1]) / (1 + 4 * w)))


def test_cas_sharpen_matches_the_formula_by_hand():
    rng = np.random.default_rng(5)
    image = rng.random((1, 5, 6, 3)).astype(np.float32)
    out = cas_sharpen(image, 0.2)
    for y, x, c in ((2, 3, 0), (1, 1, 2), (3, 4, 1)):
        neighbourhood = image[0, y - 1:y + 2, x - 1:x + 2, c].tolist()
        assert out[0, y, x, c] == pytest.approx(cas_pixel(neighbourhood, 0.2), abs=1e-6)
    assert np.array_equal(cas_sharpen(image, 0.0), image)
    flat = np.full((1, 6, 6, 3), 0.4, np.float32)
    assert np.allclose(cas_sharpen(flat, 0.2)[:, 1:-1, 1:-1], 0.4, atol=1e-7)


# ------------------------------------------------------------------------------------------------- step checks

def test_a_schedule_longer_than_the_training_timesteps_is_a_config_error():
    with pytest.raises(ConfigError, match=r"tiled.strength: 0.01 with 20 steps needs a schedule of 2000"):
        check_settings(load_sample_config("configs/tiny/sample.yaml",
                                          ["stages=[t2v,tiled]", "tiled.strength=0.01", "tiled.steps=20"]))
    with pytest.raises(ConfigError, match="face.scheduler: .* is not a scheduler block"):
        check_settings(load_sample_config("configs/tiny/sample.yaml",
                                          ["stages=[t2v,face]", "face.detector=dlib", "face.scheduler={nme: x}"]))


# ------------------------------------------------------------------------------------------------ paper.yaml prompts

# Node 6 (CLIPTextEncode, negative) of Magic-Me-ComfyUI-workflow.json, copied by hand from the workflow.
NODE_6 = ("(deformed iris, deformed pupils, semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime), text, "
          "cropped, out of frame, worst quality, low quality, jpeg artifacts, ugly, duplicate, morbid, mutilated, "
          "extra fingers, mutated hands, poorly drawn hands, poorly drawn face, mutation, deformed, blurry, "
          "dehydrated, bad anatomy, bad proportions, extra limbs, cloned face, disfigured, gross proportions, "
          "malformed limbs, missing arms, missing legs, extra arms, extra legs, fused fingers, too many fingers, "
          "long neck, UnrealisticDream")
# Node 202 (BatchPromptSchedule): pre_text; its keyframes "0": "" and "8": "" and app_text "" add only spaces.
NODE_202_PRE_TEXT = "a photo of embedding:altman man in superman costume in the outer space, stars in the background"


def test_paper_preset_carries_the_graphs_prompts_verbatim(tiny_pipeline):
    cfg = load_sample_config("configs/sample/paper.yaml", [])
    assert cfg.negative_prompt == NODE_6 and cfg.prompt_weighting == "comfy"
    assert [entry if isinstance(entry, str) else entry["prompt"] for entry in cfg.prompts] == [NODE_202_PRE_TEXT]
    # what BatchPromptSchedule hands the encoder every frame: pre_text + " " + keyframe "" + " " + app_text ""
    scheduled = NODE_202_PRE_TEXT + " " + "" + " " + ""
    assert tiny_pipeline.prompts.tokenize(scheduled).words == tiny_pipeline.prompts.tokenize(NODE_202_PRE_TEXT).words
