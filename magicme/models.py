"""Loading every model a run needs, from the formats users actually have on disk.

Base model: a diffusers folder (`stable-diffusion-v1-5`) or a single-file `.safetensors`/`.ckpt` checkpoint
(Realistic Vision and other community models), whose component configs and tokenizer come from `base_config`, a
local diffusers folder, so nothing is looked up on the Hub. A Hub id is fetched only when the user writes one.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from magicme.embeddings import load_into_pipeline
from magicme.errors import ConfigError
from magicme.motion_module import load_motion_adapter, merge_motion_lora
from magicme.parity import apply_animatediff_numerics
from magicme.pipeline import MagicPipeline

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
# SD1.5's training schedule, shared by every sampler so that they all denoise the model the base was trained for.
SD15_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "num_train_timesteps": 1000}
SCHEDULERS = {
    # AnimateDiff's DDIM: steps_offset 1 with "leading" spacing is what its diffusers-0.11 DDIM computed.
    "ddim": lambda: DDIMScheduler(**SD15_BETAS, steps_offset=1, clip_sample=False, set_alpha_to_one=False,
                                  timestep_spacing="leading"),
    "euler": lambda: EulerDiscreteScheduler(**SD15_BETAS, steps_offset=1, timestep_spacing="leading"),
    "euler_a": lambda: EulerAncestralDiscreteScheduler(**SD15_BETAS, steps_offset=1, timestep_spacing="leading"),
    "dpmpp_2m": lambda: DPMSolverMultistepScheduler(**SD15_BETAS, steps_offset=1, algorithm_type="dpmsolver++",
                                                    solver_order=2),
    # The Magic-Me ComfyUI graph samples with dpmpp_2m + karras sigmas.
    "dpmpp_2m_karras": lambda: DPMSolverMultistepScheduler(**SD15_BETAS, steps_offset=1, algorithm_type="dpmsolver++",
                                                           solver_order=2, use_karras_sigmas=True),
}


@dataclass
class BaseComponents:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on a GPU (what SD1.5 and AnimateDiff were run in) and fp32 on CPU (fp16 is slow there)."""
    if precision == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def is_hub_id(value: str) -> bool:
    """`org/name` that is not a local path: fetched from the Hugging Face Hub only because the user wrote it."""
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not Path(value).exists() and not value.startswith((".", "~", "models/"))


def make_scheduler(name: str):
    if name not in SCHEDULERS:
        raise ConfigError(f"model.scheduler: unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]()


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


def load_pipeline(model, embeddings: dict[str, Path] | None = None, device: str = "auto", precision: str = "auto",
                  attention: str = "sdpa", vae_slicing: bool = False, cpu_offload: bool = False) -> MagicPipeline:
    """Build the T2V/V2V pipeline from a validated `model:` config block (see magicme/config.py), with the ID
    embeddings the prompts use registered as tokens `<name>`."""
    device_ = resolve_device(device)
    dtype = resolve_dtype(precision, device_)
    vae = load_vae(str(model.vae), model.get("base_config"), dtype) if model.get("vae") else None
    base = load_base(str(model.base), model.get("base_config"), dtype, vae=vae)
    adapter, info = load_motion_adapter(model.motion_module)
    unet = UNetMotionModel.from_unet2d(base.unet, adapter)
    if unet.dtype != dtype:
        unet.to(dtype)
    apply_animatediff_numerics(unet, info.version, model.get("animatediff_numerics", "original"))
    for lora in model.get("motion_loras") or []:
        merge_motion_lora(unet, lora.path, float(lora.strength))
    pipe = AnimateDiffPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet, motion_adapter=None,
        scheduler=make_scheduler(model.get("scheduler", "ddim")),
    )
    load_into_pipeline(pipe, embeddings or {})
    if attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device_)
    else:
        pipe.to(device_)
    return MagicPipeline(pipe, motion_version=info.version, max_frames=info.max_seq_length)
