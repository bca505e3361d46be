"""Reading untrusted checkpoint files safely: safetensors, or pickles restricted to tensors (`weights_only`)."""

import io
import pickle
import pickletools
import warnings
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
        with warnings.catch_warnings():  # torch warns about the file before raising; the error line says it all
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                return load_file(path)
            if zipfile.is_zipfile(path):  # torch's own format: memory-map, so checking a 1.8 GB module reads only keys
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if is_pickle(path):  # a well-formed pickle whose objects weights_only refused: code, not just tensors
            raise ConfigError(f"{path}: not a readable {what}: it holds objects other than tensors, which could run "
                              "code; use a safetensors file or one saved as plain tensors") from err
        raise ConfigError(f"{path}: not a readable {what}: corrupt or not a checkpoint (no pickle of tensors); "
                          "re-download it") from err
    except Exception as err:  # torch/safetensors raise many types for corrupt files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"{path}: not a readable {what}: corrupt or not a checkpoint ({type(err).__name__}"
                          f"{': ' + first_line if first_line else ''}); re-download it") from err


def is_pickle(path: Path) -> bool:
    """Whether the file (or the `data.pkl` of torch's zip format) is a well-formed pickle stream, read opcode by
    opcode without building an object: what tells a refused object (code) from garbage."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                stream = io.BytesIO(archive.read(name))
        else:
            stream = open(path, "rb")
        with stream:
            for _ in pickletools.genops(stream):
                pass
        return True
    except Exception:  # noqa: BLE001 - any failure to parse means: not a pickle
        return False


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
