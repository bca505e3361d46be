"""Which device and dtype a run uses (shared by sampling, training and evaluation)."""

import torch


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


def device_problem(device: str, key: str = "device") -> str | None:
    """Why `device` cannot be used on this machine (None when it can): checked before any model loads."""
    kind, _, index = device.partition(":")
    if device == "auto" or kind == "cpu":
        return None
    if kind == "cuda":
        if not torch.cuda.is_available():
            return f"{key}: {device} asked for, but this machine has no usable CUDA GPU; use device=auto or cpu"
        if index and int(index) >= torch.cuda.device_count():
            return f"{key}: {device} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
        return None
    if kind == "mps" and not torch.backends.mps.is_available():
        return f"{key}: mps asked for, but Apple MPS is not available here; use device=auto or cpu"
    return None
