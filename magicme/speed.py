"""Speed settings shared by sampling and training: regional compilation of the UNet, the attention kernel, TF32.

**Regional compilation** (`compile: true`, `--compile`). Compiling the whole `UNetMotionModel` traces one huge
graph (measured: it did not finish in 5 minutes on an H100); diffusers' `compile_repeated_blocks` refuses the motion
UNet, which declares no repeated blocks. Here each down, mid and up block (resnets, spatial attention and motion
modules together) is compiled on its own with `fullgraph=True` and static shapes: a graph break is an error, not a
silent slowdown, and a block traced once is reused for every step of a run. The inductor cache lives on disk next to
the models (`<models folder>/.inductor-cache`, unless TORCHINDUCTOR_CACHE_DIR is set), so a second run with the same
shapes compiles from cache. Figures: docs/speed.md.

**Attention kernel** (`sdpa_backend`). PyTorch's scaled-dot-product attention picks a kernel by rules, not by
speed; `auto` times each kernel this device has on the run's largest attention shape (a few calls, well under a
second) and keeps the fastest. The choice is remembered next to the models (`<models folder>/.sdpa-kernels.json`,
per device, dtype and shape), so every later run on the machine computes with the same kernel: a timing taken
while other work shares the device cannot change a config's pixels from one run to the next. A named kernel is
checked to exist on the device before any model loads.

**fp8** (`fp8: true`). The UNet's linear layers run as float8 matmuls (torchao's dynamic activation + weight
quantization) on cards with fp8 tensor cores; convolutions and everything else stay bf16. Not yet measured: the GPU
script reports its speed and the relative error of the noise prediction against bf16 (docs/speed.md).
"""

import importlib.util
import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from magicme.errors import ConfigError
from magicme.video_io import atomic_path

SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
CACHE_FOLDER = ".inductor-cache"
KERNEL_CHOICES = ".sdpa-kernels.json"


def unet_regions(unet: nn.Module) -> list[nn.Module]:
    """The blocks compiled one by one: every down block, the mid block and every up block (motion UNets carry their
    motion modules inside these blocks)."""
    return [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]


def compile_unet(unet: nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile `unet`'s blocks in place (hooks on them, like FreeU's, are traced with them); returns how many."""
    regions = unet_regions(unet)
    for block in regions:
        block.compile(backend=backend, mode=mode, fullgraph=True, dynamic=False)
    return len(regions)


def compile_backend_problem(backend: str, key: str = "compile_backend") -> str | None:
    """Why `backend` is no torch.compile backend (None when it is)."""
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend in known:
        return None
    return (f"{key}: {backend!r} is not a torch.compile backend here; use inductor (the default), cudagraphs, or "
            "eager / aot_eager to check tracing without code generation")


def fp8_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `fp8: true` cannot run here (None when it can): checked before any model loads."""
    if device.type != "cuda":
        return "fp8: needs a CUDA GPU with fp8 tensor cores (compute capability 8.9+: Ada, Hopper); set fp8=false"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return (f"fp8: {torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]}) has "
                "no fp8 tensor cores; set fp8=false")
    if dtype != torch.bfloat16:
        return "fp8: torchao's float8 matmuls take bf16 activations; set precision=bf16"
    if importlib.util.find_spec("torchao") is None:
        return "fp8: needs torchao; pip install torchao (a release matching your torch)"
    return None


def quantize_fp8(unet: nn.Module) -> None:
    """Every linear layer of `unet` to dynamic float8 (activations and weights, per-tensor scales), in place."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    quantize_(unet, Float8DynamicActivationFloat8WeightConfig())


def use_compile_cache(models_dir: Path) -> Path:
    """Point inductor's on-disk cache into the models folder (a user's TORCHINDUCTOR_CACHE_DIR wins)."""
    folder = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(models_dir) / CACHE_FOLDER)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def models_folder(base: str) -> Path:
    """Where a run's models live: the folder holding a local base model, else ./models (a hub id)."""
    path = Path(base)
    return path.parent if path.exists() else Path("models")


def allow_tf32(enabled: bool) -> None:
    """TF32 for the float32 matmuls and convolutions left under mixed precision (Ampere and newer; no-op elsewhere)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def sdpa_runs(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this device has the kernel `backend` for attention in `dtype` (a 1-query call tells)."""
    q = torch.zeros(1, 1, 8, 64, device=device, dtype=dtype)
    try:
        with sdpa_kernel([SDPA_BACKENDS[backend]]):
            F.scaled_dot_product_attention(q, q, q)
    except RuntimeError:
        return False
    return True


def sdpa_problem(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `sdpa_backend` cannot be used here (None when it can)."""
    if backend == "auto" or sdpa_runs(backend, device, dtype):
        return None
    here = [name for name in SDPA_BACKENDS if sdpa_runs(name, device, dtype)]
    return (f"sdpa_backend: {backend} has no kernel for {str(dtype).removeprefix('torch.')} on {device.type}; "
            f"use auto or one of {', '.join(here)}")


def attention_shape(width: int, height: int, frames: int, guidance: bool, heads: int = 8,
                    head_dim: int = 40) -> tuple[int, int, int, int]:
    """(batch, heads, tokens, head_dim) of SD1.5's costliest attention: the first down block's spatial
    self-attention over the latent pixels of every frame (and of both halves of classifier-free guidance)."""
    return (frames * (2 if guidance else 1), heads, (width // 8) * (height // 8), head_dim)


def time_sdpa(backend: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
              repeats: int = 5) -> float:
    """Seconds of one attention call of `shape` with `backend`: the fastest of `repeats` after a warm-up call (the
    minimum, as other work on the device only ever adds time)."""
    q = torch.randn(shape, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    seconds = []
    with sdpa_kernel([SDPA_BACKENDS[backend]]):
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, q, q)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return min(seconds[1:])


def fastest_sdpa(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> str:
    """The kernel with the shortest measured time on `shape`, among those this device has."""
    here = [name for name in SDPA_BACKENDS if sdpa_runs(name, device, dtype)]
    if not here:
        raise ConfigError(f"sdpa_backend: no attention kernel runs for {dtype} on {device}; use precision=fp32")
    return min(here, key=lambda name: time_sdpa(name, shape, device, dtype))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}:{platform.machine()}"


def remembered_sdpa(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, models_dir: Path) -> str:
    """`auto`'s kernel for this device, dtype and shape: read from `<models_dir>/.sdpa-kernels.json`, or measured
    (`fastest_sdpa`) and written there."""
    path = Path(models_dir) / KERNEL_CHOICES
    key = f"{device_name(device)} | {str(dtype).removeprefix('torch.')} | {'x'.join(map(str, shape))}"
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}  # unreadable: measured again and rewritten
    if known.get(key) in SDPA_BACKENDS and sdpa_runs(known[key], device, dtype):
        return known[key]
    known[key] = fastest_sdpa(shape, device, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    return known[key]


@contextmanager
def attention_kernel(backend: str):
    """Run the block with only `backend` allowed for scaled-dot-product attention."""
    with sdpa_kernel([SDPA_BACKENDS[backend]]):
        yield
