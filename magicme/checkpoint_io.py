"""Reading untrusted checkpoint files safely: safetensors, or pickles restricted to tensors (`weights_only`)."""

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from magicme.errors import ConfigError
from magicme.video_io import atomic_path


def load_checkpoint(path: Path | str, what: str = "checkpoint"):
    """The object stored in a `.safetensors`, `.ckpt`, `.pt`, `.pth` or `.bin` file, read without running code.

    A missing, corrupt or code-carrying file is a `ConfigError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        if zipfile.is_zipfile(path):  # torch's own format: memory-map, so checking a 1.8 GB module reads only keys
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused an object: the file carries code, not just tensors
        raise ConfigError(f"{path}: not a readable {what}: it holds objects other than tensors, which could run code; "
                          "use a safetensors file or one saved as plain tensors") from err
    except Exception as err:  # torch/safetensors raise many types for corrupt files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"{path}: not a readable {what} ({type(err).__name__}: {first_line})") from err


def save_torch(obj, path: Path | str) -> Path:
    """`torch.save` atomically and reproducibly: written through a file object, the archive's inner folder is
    always "archive" (given a path, torch names it after the temporary file, so equal objects gave unequal bytes)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return path


def save_tensors(state: dict[str, torch.Tensor], path: Path | str) -> Path:
    """A state dict atomically as `.safetensors` (by suffix) or, for any other suffix, as a torch file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return save_torch(state, path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return path
