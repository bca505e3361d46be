"""The SD1.5 model family: SD1.5-architecture bases (SD1.5, Realistic Vision, …) + AnimateDiff SD1.5 motion modules.

A family answers two questions (see magicme/families/__init__.py): `check(model)` — do the files of a `model:`
block fit together, read from headers only, before anything loads — and `load(model, ...)` — build the pipeline.

Base model: a diffusers folder (`stable-diffusion-v1-5`) or a single-file `.safetensors`/`.ckpt` checkpoint
(Realistic Vision and other community models), whose component configs and tokenizer come from `base_config`, a
local diffusers folder, so nothing is looked up on the Hub. A Hub id is fetched only when the user writes one.
"""

import inspect
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from magicme.devices import resolve_device, resolve_dtype
from magicme.embeddings import load_into_pipeline
from magicme.errors import ConfigError
from magicme.inspector import CHECKPOINT_SUFFIXES, animatediff_lora_layout, is_hub_id
from magicme.motion_module import (load_motion_adapter, merge_animatediff_lora, merge_motion_lora, motion_unet,
                                   read_state_dict)
from magicme.parity import apply_animatediff_numerics
from magicme.pipeline import MagicPipeline, place

NAME = "sd15"
CONTROL = True  # the first stage takes `control:` ControlNets (magicme/control/)
# The beta schedule every sampler shares: AnimateDiff's linear betas 0.00085–0.012, which the original Magic-Me and
# AnimateDiff sample (and the motion modules were trained) with. SD1.5 itself was trained with "scaled_linear" betas
# over the same range; the original code uses "linear", and so do we.
SD15_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "num_train_timesteps": 1000}
# Named presets: a diffusers scheduler class and its settings. `model.scheduler.name` may also be any diffusers
# scheduler class name, and `model.scheduler.kwargs` override a preset's settings (e.g. timestep_spacing: trailing).
SCHEDULER_PRESETS = {
    # The original's DDIM: steps_offset 1 with "leading" spacing is what its diffusers-0.11 DDIM computed, and
    # set_alpha_to_one is its default (True): the last step lands on the clean sample.
    "ddim": ("DDIMScheduler", {"steps_offset": 1, "clip_sample": False, "set_alpha_to_one": True,
                               "timestep_spacing": "leading"}),
    "euler": ("EulerDiscreteScheduler", {"steps_offset": 1, "timestep_spacing": "leading"}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {"steps_offset": 1, "timestep_spacing": "leading"}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"steps_offset": 1, "algorithm_type": "dpmsolver++",
                                                 "solver_order": 2}),
    # The Magic-Me ComfyUI graph samples with dpmpp_2m + karras sigmas.
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"steps_offset": 1, "algorithm_type": "dpmsolver++",
                                                        "solver_order": 2, "use_karras_sigmas": True}),
    # AnimateDiff-Lightning's model card: Euler with "trailing" timesteps (the first step starts at t = 999, pure
    # noise, which 1-8-step distilled modules need) over linear betas, guidance 1.
    "lightning": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    # AnimateLCM's own inference config (animatelcm_sd15/configs/inference-t2v.yaml): linear betas, steps_offset 1,
    # a 100-step skeleton its 4-8 steps are picked from.
    "lcm": ("LCMScheduler", {"steps_offset": 1, "original_inference_steps": 100}),
}


@dataclass
class BaseComponents:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel


def scheduler_spec(scheduler, key: str = "model.scheduler", betas: dict = SD15_BETAS) -> tuple[type, dict]:
    """The diffusers class and constructor arguments of a scheduler block `{name, kwargs}` (`key` names it in
    errors: `model.scheduler`, `face.scheduler`, …) over the family's `betas`."""
    name, kwargs = scheduler["name"], dict(scheduler.get("kwargs") or {})
    class_name, preset = SCHEDULER_PRESETS.get(name, (name, {}))
    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ConfigError(f"{key}.name: {name!r} is neither a preset ({', '.join(SCHEDULER_PRESETS)}) nor "
                          f"a diffusers scheduler class (e.g. EulerDiscreteScheduler, LCMScheduler)")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"{key}.kwargs: {class_name} has no setting {', '.join(unknown)}; it takes "
                          f"{', '.join(sorted(accepted))}")
    return cls, {**betas, **preset, **kwargs}


def make_scheduler(scheduler, key: str = "model.scheduler", betas: dict = SD15_BETAS):
    """A fresh scheduler from a `{name, kwargs}` block."""
    cls, kwargs = scheduler_spec(scheduler, key, betas)
    return cls(**kwargs)


def check(model, schedulers: dict | None = None, schedules: list | None = None, betas: dict = SD15_BETAS) -> None:
    """What needs this family's libraries to check (the files were already inspected from their headers by
    magicme/inspector.py): the classes and settings of the model's scheduler and of `schedulers` (stages' own,
    by config key), and that each scheduler can make the schedules the run asks of it — `schedules`:
    (scheduler key, block, schedule length, the setting that asks for it); e.g. LCMScheduler picks its steps from
    `original_inference_steps` and can make no longer schedule. Raises `ConfigError`."""
    for key, scheduler in {"model.scheduler": model.scheduler, **(schedulers or {})}.items():
        scheduler_spec(scheduler, key, betas)
    for key, scheduler, length, why in schedules or []:
        try:
            make_scheduler(scheduler, key, betas).set_timesteps(length)
        except ValueError as err:
            raise ConfigError(f"{why}: needs a schedule of {length} steps, which {key} ({scheduler['name']}) cannot "
                              f"make ({err}); run fewer steps or raise the strength") from None


def load_base(base: str, base_config: str | None, dtype: torch.dtype, vae: AutoencoderKL | None = None) -> BaseComponents:
    """SD1.5-family tokenizer, text encoder, VAE and 2D UNet from a diffusers folder/Hub id or a single file.

    A given `vae` replaces the base's own, which is then not loaded at all (so "noVAE" files work).
    """
    path = Path(base)
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        extra = {"vae": vae} if vae is not None else {}
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(base_config), local_files_only=not is_hub_id(str(base_config)),
            torch_dtype=dtype, safety_checker=None, requires_safety_checker=False, **extra,
        )
        return BaseComponents(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet)
    local = not is_hub_id(base)
    kwargs = {"local_files_only": local, "torch_dtype": dtype}
    return BaseComponents(
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", local_files_only=local),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kwargs),
        vae=vae if vae is not None else AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs),
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs),
    )


def load_vae(vae: str, base_config: str | None, dtype: torch.dtype) -> AutoencoderKL:
    """A separate VAE (e.g. sd-vae-ft-mse for a noVAE checkpoint): a diffusers folder or a single file."""
    path = Path(vae)
    if path.is_file():
        return AutoencoderKL.from_single_file(str(path), config=str(base_config), subfolder="vae",
                                              local_files_only=True, torch_dtype=dtype)
    if (path / "vae" / "config.json").is_file():
        return AutoencoderKL.from_pretrained(vae, subfolder="vae", local_files_only=True, torch_dtype=dtype)
    return AutoencoderKL.from_pretrained(vae, local_files_only=not is_hub_id(vae), torch_dtype=dtype)


def fuse_loras(pipe: AnimateDiffPipeline, loras) -> None:
    """Fuse each SD1.5 image LoRA (`model.loras`: AnimateLCM's, or any SD1.5 LoRA) into the UNet's spatial layers
    (and the text encoder, when the file has its keys) at its strength, with diffusers' own LoRA loading; the LoRA
    layers are removed again, so sampling runs plain weights, as fast as without a LoRA. A LoRA in AnimateDiff's own
    layout (the v3 domain adapter, which diffusers does not read) is merged as the original code merges it."""
    for i, lora in enumerate(loras):
        key = f"model.loras[{i}].path"
        try:
            state = read_state_dict(lora.path)
        except ConfigError as err:
            raise ConfigError(f"{key}: {err}") from None
        if animatediff_lora_layout(state):
            unknown = merge_animatediff_lora(pipe.unet, state, float(lora.strength))
            if unknown:
                raise ConfigError(f"{key}: {lora.path}: {len(unknown)} of the weights this AnimateDiff-layout LoRA "
                                  f"changes are not in this SD1.5 base (e.g. {unknown[0]}); use one made for SD1.5")
            continue
        try:
            pipe.load_lora_weights(state, adapter_name=f"lora{i}")
        except (ValueError, KeyError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{key}: {lora.path}: diffusers cannot load it into this SD1.5 base ({first}); use a "
                              f"LoRA trained for an SD1.5-family model") from None
        if not any(f"lora{i}" in names for names in pipe.get_list_adapters().values()):
            raise ConfigError(f"{key}: {lora.path}: none of its keys names a layer of this SD1.5 base; use a LoRA "
                              f"trained for an SD1.5-family model")
        pipe.fuse_lora(lora_scale=float(lora.strength), adapter_names=[f"lora{i}"])
        pipe.unload_lora_weights()


def load(model, embeddings: dict[str, Path] | None = None, device: str = "auto", precision: str = "auto",
         attention: str = "sdpa", vae_slicing: bool = False, cpu_offload: bool = False) -> MagicPipeline:
    """Build the T2V/V2V pipeline from a checked `model:` config block (magicme/schema.py), with the ID
    embeddings the prompts use registered as tokens `<name>`."""
    device_ = resolve_device(device)
    dtype = resolve_dtype(precision, device_)
    vae = load_vae(str(model.vae), model.get("base_config"), dtype) if model.get("vae") else None
    base = load_base(str(model.base), model.get("base_config"), dtype, vae=vae)
    adapter, info = load_motion_adapter(model.motion_module)
    unet = motion_unet(base.unet, adapter)
    if unet.dtype != dtype:
        unet.to(dtype)
    apply_animatediff_numerics(unet, info.version, model.animatediff_numerics)
    for lora in model.motion_loras:
        merge_motion_lora(unet, lora.path, float(lora.strength))
    pipe = AnimateDiffPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet, motion_adapter=None,
        scheduler=make_scheduler(model.scheduler),
    )
    fuse_loras(pipe, model.loras)
    load_into_pipeline(pipe, embeddings or {})
    place(pipe, device_, attention, vae_slicing, cpu_offload)
    return MagicPipeline(pipe, motion_version=info.version, max_frames=info.max_seq_length, family=NAME)
