"""SD-XL video→video (Face VCD, Tiled VCD, editing) and prompt travel on the tiny SD-XL bundle.

diffusers has no AnimateDiff SD-XL video→video pipeline, so the family runs `AnimateDiffSDXLPipeline` over the last
steps of a schedule (`last_steps`); these tests hold that to what diffusers' own video→video pipelines do with
`strength`: the same timesteps, the same scheduler steps, from the same prior-noised latents."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler)
from diffusers.pipelines.animatediff.pipeline_animatediff_sdxl import retrieve_timesteps

import sample
from magicme.families import sdxl
from magicme.noise_prior import noise_latents, sample_noise_prior
from magicme.sampling import run_sampling
from magicme.schema import model_config
from magicme.steps import schedule_length

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny" / "sample_sdxl.yaml"
FAST = ["steps=2", "frames=4", "width=32", "height=32", "device=cpu", "precision=fp32", "formats=[gif]"]
SCHEDULERS = [("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler), ("euler_a", EulerAncestralDiscreteScheduler),
              ("dpmpp_2m_karras", DPMSolverMultistepScheduler), ("lcm", LCMScheduler)]


@pytest.fixture()
def in_repo_layout(tmp_path, tiny_bundle, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_bundle["sd15"].parent)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def sdxl_pipeline(tiny_bundle):
    model = model_config({"family": "sdxl", "base": str(tiny_bundle["sdxl"]),
                          "motion_module": str(tiny_bundle["motion_sdxl"]), "animatediff_numerics": "diffusers"})
    return sdxl.load(model, {"tinyperson": tiny_bundle["embedding_sdxl"]}, device="cpu", precision="fp32")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def denoise(scheduler, timesteps, latents: torch.Tensor) -> torch.Tensor:
    """A pipeline's loop with a fixed stand-in for the UNet (ε = a function of the input and t)."""
    generator = torch.Generator().manual_seed(0)
    for t in timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        epsilon = 0.3 * model_input + 0.001 * float(t)
        kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        latents = scheduler.step(epsilon, t, latents, **kwargs, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("preset,cls", SCHEDULERS)
@pytest.mark.parametrize("steps,strength", [(4, 0.5), (3, 0.8), (5, 1.0), (3, 0.06)])
def test_last_steps_is_diffusers_video_to_video_schedule(preset, cls, steps, strength):
    """Inside `last_steps`, the SD-XL pipeline's `retrieve_timesteps` gets the last `steps` timesteps of the
    `length`-step schedule, and a loop over them gives bit for bit what diffusers' video→video pipelines compute
    (`timesteps[t_start · order:]` with `set_begin_index(t_start · order)`), multistep and LCM schedulers included.
    (3, 0.06): karras' 50-step schedule repeats timestep 1 at its end, so only the begin index finds the step."""
    length = schedule_length(steps, strength)
    ours, reference = sdxl.make_scheduler({"name": preset}), sdxl.make_scheduler({"name": preset})
    assert isinstance(ours, cls) and ours.config.beta_end == sdxl.SDXL_BETAS["beta_end"]
    start = (length - steps) * reference.order
    reference.set_timesteps(length)
    if hasattr(reference, "set_begin_index"):
        reference.set_begin_index(start)
    expected_timesteps = reference.timesteps[start:]
    latents = torch.randn((1, 4, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    with sdxl.last_steps(ours, steps):
        timesteps, _ = retrieve_timesteps(ours, length, "cpu")
        assert torch.equal(timesteps, expected_timesteps) and len(timesteps) == steps
        assert torch.equal(denoise(ours, timesteps, latents), denoise(reference, expected_timesteps, latents))
    assert "set_timesteps" not in vars(ours) and "scale_model_input" not in vars(ours)
    assert torch.equal(ours.timesteps, reference.timesteps)


@pytest.mark.parametrize("preset", ["ddim", "euler"])
def test_sdxl_video_to_video_starts_from_prior_noised_latents(sdxl_pipeline, preset):
    """The UNet's first input is the clip's latents noised with the 3D prior to the first kept timestep (as the
    scheduler scales a model input: Euler's σ-scaling included), and the UNet runs exactly the kept timesteps;
    strength 0 returns the clip untouched."""
    video = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    seen, hook = [], sdxl_pipeline.t2v.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0].clone(), args[1].clone())), with_kwargs=True)
    try:
        out = sdxl_pipeline.video_to_video(video, "a photo of <tinyperson> man", "", torch.Generator().manual_seed(5),
                                           gamma=0.1, strength=0.6, steps=3, guidance_scale=7.5, progress=False,
                                           scheduler=sdxl.make_scheduler({"name": preset}))
    finally:
        hook.remove()
    scheduler, length = sdxl.make_scheduler({"name": preset}), schedule_length(3, 0.6)
    scheduler.set_timesteps(length)
    kept = scheduler.timesteps[-3:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(length - 3)
    assert [int(t) for _, t in seen] == [int(t) for t in kept]
    clean = sdxl_pipeline.encode_video(video)
    noise = sample_noise_prior(tuple(clean.shape), 0.1, torch.Generator().manual_seed(5))
    expected = scheduler.scale_model_input(noise_latents(clean, noise, scheduler, kept[0]), kept[0])
    assert torch.allclose(seen[0][0][1], expected[0], atol=1e-5)  # [negative, positive]: the same latents
    assert out.shape == video.shape and not np.allclose(out, video, atol=1e-2)
    assert np.array_equal(sdxl_pipeline.video_to_video(video, "x", "", torch.Generator(), gamma=0.1, strength=0.0,
                                                       steps=3, guidance_scale=7.5), video)


def test_chunked_decoding_is_the_pipelines_decoding(sdxl_pipeline):
    """Frames decoded `vae_chunk` at a time equal the pipeline's all-at-once decoder, up to float rounding."""
    latents = torch.randn((1, 4, 5, 4, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = sdxl_pipeline.t2v.video_processor.postprocess_video(
            video=sdxl_pipeline.t2v.decode_latents(latents), output_type="np")[0]
    chunk = sdxl_pipeline.vae_chunk
    try:
        for sdxl_pipeline.vae_chunk in (1, 2, 5):
            ours = sdxl_pipeline.frames(type("Out", (), {"frames": latents})())
            assert ours.shape == (5, 32, 32, 3) and np.abs(ours - whole).max() < 1e-5
    finally:
        sdxl_pipeline.vae_chunk = chunk


def test_sdxl_face_and_tiled_vcd_then_edit(in_repo_layout, tiny_bundle):
    """configs/tiny/sample_sdxl.yaml with stages [t2v, face, tiled] through sample.py, then an edit of its video:
    every stage writes its video at its size."""
    stages = ["stages=[t2v,face,tiled]", "face.clipseg_model=models/tiny/clipseg", "face.size=32",
              "face.threshold=0.5", "tiled.tile=64", "tiled.padding=8", "prompts=[a photo of <tinyperson> man]",
              "seeds=[4]"]
    assert sample.main(["--config", str(CONFIG), "--quiet", *FAST, *stages, "output_dir=out"]) == 0
    (run_dir,) = Path("out").iterdir()
    t2v, face, tiled = records(run_dir)
    assert [r["stage"] for r in (t2v, face, tiled)] == ["t2v", "face", "tiled"]
    assert (tiled["height"], tiled["width"]) == (64, 64)
    edit = run_sampling(CONFIG, [*FAST, "prompts=[a photo of <tinyperson> man]", "seeds=[4]", "output_dir=edit",
                                 f"input_video={run_dir / t2v['files']['gif']}", "input_strength=0.5",
                                 "stages=[edit]"], progress=False)
    (record,) = records(edit)
    assert record["stage"] == "edit" and (record["frames"], record["height"], record["width"]) == (4, 32, 32)


def test_sdxl_prompt_travel_reaches_each_frame(sdxl_pipeline):
    """A travelling prompt: frame 0's cross-attention rows are the first keyframe's encoding, the last frame's the
    second's; the pooled vector is the frames' mean of the interpolated pooled vectors (one per video in the
    motion UNet)."""
    unet, seen = sdxl_pipeline.t2v.unet, []  # the rows as the UNet's blocks read them (travel swaps them inside)
    hooks = [unet.mid_block.register_forward_pre_hook(
                 lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True),
             unet.register_forward_pre_hook(
                 lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["text_embeds"].clone()),
                 with_kwargs=True)]
    first, last = "a photo of <tinyperson> man smiling", "a photo of <tinyperson> man crying in the rain"
    try:
        sdxl_pipeline.text_to_video({0: first, 3: last}, "blurry", torch.Generator().manual_seed(0), gamma=0.1,
                                    frames=4, height=32, width=32, steps=1, guidance_scale=7.5, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    pooled, rows = seen
    prompts = sdxl_pipeline.prompts
    chunks = prompts.chunks(first, last, "blurry")
    (a, pooled_a), (b, pooled_b) = (prompts.conditioning(text, chunks) for text in (first, last))
    negative, negative_pooled = prompts.conditioning("blurry", chunks, negative=True)
    assert rows.shape[0] == 2 * 4  # [negative frames, positive frames]
    assert torch.equal(rows[4], a[0]) and torch.equal(rows[7], b[0]) and torch.equal(rows[0], negative[0])
    assert torch.allclose(rows[5], torch.lerp(a[0], b[0], 1 / 3), atol=1e-6)
    expected = torch.stack([torch.lerp(pooled_a[0], pooled_b[0], t) for t in (0, 1 / 3, 2 / 3, 1)]).mean(0)
    assert torch.allclose(pooled[1], expected, atol=1e-6) and torch.equal(pooled[0], negative_pooled[0])
