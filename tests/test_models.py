import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from omegaconf import OmegaConf

from magicme.devices import resolve_dtype
from magicme.errors import ConfigError
from magicme.families.sd15 import load, load_vae, make_scheduler
from magicme.inspector import is_hub_id


def scheduler(name: str, **kwargs):
    return make_scheduler(OmegaConf.create({"name": name, "kwargs": kwargs}))


def test_ddim_is_configured_as_animatediff():
    cfg = scheduler("ddim").config
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == (0.00085, 0.012, "linear")
    assert cfg.steps_offset == 1 and cfg.clip_sample is False
    assert cfg.set_alpha_to_one is True  # the original builds DDIMScheduler with the default: last step = x0
    ddim = scheduler("ddim")
    ddim.set_timesteps(25)
    assert ddim.timesteps[0].item() == 961 and ddim.timesteps[-1].item() == 1  # AnimateDiff's schedule


def test_scheduler_presets_class_names_kwargs_and_bad_names():
    assert scheduler("dpmpp_2m_karras").config.use_karras_sigmas is True
    assert scheduler("euler").config.beta_end == 0.012
    trailing = scheduler("euler", timestep_spacing="trailing")
    trailing.set_timesteps(4)
    assert trailing.config.timestep_spacing == "trailing" and trailing.timesteps[0].item() == 999
    lcm = scheduler("LCMScheduler")
    assert type(lcm).__name__ == "LCMScheduler" and lcm.config.beta_end == 0.012  # SD1.5's betas for any class
    with pytest.raises(ConfigError, match="model.scheduler.name: 'lms' is neither a preset"):
        scheduler("lms")
    with pytest.raises(ConfigError, match="model.scheduler.name: 'AutoencoderKL' is neither"):
        scheduler("AutoencoderKL")
    with pytest.raises(ConfigError, match="model.scheduler.kwargs: DDIMScheduler has no setting karras"):
        scheduler("ddim", karras=True)


def test_hub_ids_only_when_written_as_such(tmp_path):
    assert is_hub_id("SG161222/Realistic_Vision_V5.1_noVAE")
    assert not is_hub_id("models/stable-diffusion-v1-5")
    assert not is_hub_id(str(tmp_path))
    assert not is_hub_id("./local/folder")


def test_dtype_defaults():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cuda")) == torch.bfloat16


def test_separate_vae_folder(tiny_bundle):
    vae = load_vae(str(tiny_bundle["sd15"] / "vae"), None, torch.float32)
    assert isinstance(vae, AutoencoderKL)
    assert load_vae(str(tiny_bundle["sd15"]), None, torch.float32).config.latent_channels == 4


def test_pipeline_components_are_shared(tiny_pipeline):
    assert tiny_pipeline.v2v.unet is tiny_pipeline.t2v.unet
    assert tiny_pipeline.v2v.vae is tiny_pipeline.t2v.vae
    assert tiny_pipeline.motion_version == "v2" and tiny_pipeline.max_frames == 32


def test_load_pipeline_applies_original_animatediff_numerics(tiny_pipeline, tiny_bundle, tiny_model_cfg):
    from magicme.parity import FramewiseGroupNorm, FramePooledGroupNorm

    assert isinstance(tiny_pipeline.t2v.unet.down_blocks[0].motion_modules[0].norm, FramewiseGroupNorm)
    v1 = tiny_model_cfg.copy()
    v1.motion_module = str(tiny_bundle["motion_v1"])
    unet = load(v1, device="cpu").t2v.unet
    assert isinstance(unet.conv_norm_out, FramePooledGroupNorm)
    v1.animatediff_numerics = "diffusers"
    unet = load(v1, device="cpu").t2v.unet
    assert type(unet.conv_norm_out) is torch.nn.GroupNorm


def test_novae_single_file_loads_with_a_separate_vae(tiny_bundle, tmp_path):
    from magicme.families.sd15 import load_base
    from magicme.tiny.ldm import save_ldm_checkpoint

    base = load_base(str(tiny_bundle["sd15"]), None, torch.float32)
    no_vae = save_ldm_checkpoint(base.unet, {}, base.text_encoder, tmp_path / "rv_noVAE.safetensors")
    vae = load_vae(str(tiny_bundle["sd15"] / "vae"), None, torch.float32)
    loaded = load_base(str(no_vae), str(tiny_bundle["sd15"]), torch.float32, vae=vae)
    assert loaded.vae is vae
    assert torch.equal(loaded.unet.state_dict()["conv_in.weight"], base.unet.state_dict()["conv_in.weight"])


def test_written_files_are_not_private(tmp_path):
    import os
    import stat

    from magicme.video_io import atomic_path

    with atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("hi")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o666 & ~umask


def test_tiny_bundle_is_deterministic(tmp_path):
    import hashlib

    from magicme.tiny.bundle import build_tiny_bundle

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    build_tiny_bundle(tmp_path / "a", seed=0)
    build_tiny_bundle(tmp_path / "b", seed=0)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and any(k.endswith(".ckpt") for k in a) and any(k.endswith(".safetensors") for k in a)


def test_pipeline_passes_diffusers_arguments_through(tiny_pipeline):
    """Callbacks and prompt embeddings reach the diffusers pipeline; a misspelt argument is an error."""
    common = dict(gamma=0.1, frames=2, height=64, width=64, steps=3, guidance_scale=7.5, progress=False)
    seen = []

    def on_step(pipe, i, t, tensors):
        seen.append(i)
        return tensors

    by_text = tiny_pipeline.text_to_video("a man", "blurry", torch.Generator().manual_seed(0),
                                          callback_on_step_end=on_step, **common)
    assert seen == [0, 1, 2]
    embeds, negative = tiny_pipeline.t2v.encode_prompt("a man", tiny_pipeline.device, 1, True, "blurry")
    by_embeds = tiny_pipeline.text_to_video("ignored", "ignored too", torch.Generator().manual_seed(0),
                                            prompt_embeds=embeds, negative_prompt_embeds=negative, **common)
    assert np.array_equal(by_text, by_embeds)
    with pytest.raises(TypeError, match="does not accept num_frame"):
        tiny_pipeline.text_to_video("a man", "", torch.Generator(), num_frame=3, **common)
