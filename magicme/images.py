"""Reading photos and frame images: one suffix set for the whole project, and a pixel limit, so a
decompression bomb (a tiny file that decodes to gigapixels) is a clear error instead of a hang or an OOM."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from magicme.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 64 * 1024 * 1024  # 64 MP: above any camera photo a user would train on, far below a bomb


def image_files(folder: Path | str) -> list[Path]:
    """The images directly in `folder` (sub-folders such as cached masks are ignored), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path | str, what: str = "image") -> np.ndarray:
    """An RGB image as float32 (H, W, 3) in [0, 1]; a `ConfigError` naming the file for anything unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as image:  # reads the header only: the size is known before any pixel is decoded
            if image.width * image.height > MAX_PIXELS:
                raise ConfigError(f"{path}: {image.width}x{image.height} pixels is more than the {MAX_PIXELS // 2**20} "
                                  f"MP limit for a {what}; resize it")
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, SyntaxError) as err:
        raise ConfigError(f"{path}: cannot read this {what} ({type(err).__name__}: {err}); remove or replace it") \
            from err
