"""Text-prompted segmentation with CLIPSeg ("prompt-to-segmentation"): person masks for training, face regions for
Face VCD. The same model serves both, so one download covers the project."""

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

from magicme.errors import ConfigError
from magicme.video_io import to_uint8

_SAMPLE_BYTES = 1 << 20


def check_clipseg_folder(model_path: Path | str) -> Path:
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: no CLIPSeg model here; run `bash download_checkpoint.sh --only clipseg` "
                          "(CIDAS/clipseg-rd64-refined)")
    return path


def model_identity(model_path: Path | str) -> str:
    """A short fingerprint of a CLIPSeg folder, without loading it (part of the mask-cache key).

    It hashes the config and, of every weight file, its size plus its first and last MiB: different weights of the
    same architecture differ there, and hashing 600 MB on every run would cost seconds.
    """
    path = check_clipseg_folder(model_path)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = weights.stat().st_size
        with weights.open("rb") as f:
            digest.update(str(size).encode() + f.read(_SAMPLE_BYTES))
            f.seek(max(0, size - _SAMPLE_BYTES))
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


class ClipSegSegmenter:
    """Per-pixel probabilities that a pixel belongs to what `prompt` names."""

    def __init__(self, model_path: Path | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        path = check_clipseg_folder(model_path)
        self.processor = CLIPSegProcessor.from_pretrained(path, local_files_only=True)
        self.model = CLIPSegForImageSegmentation.from_pretrained(path, local_files_only=True).to(device, dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.identity = model_identity(path)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, prompt: str) -> np.ndarray:
        """(N, H, W, 3) float images in [0, 1] → (N, H, W) float32 probabilities at the images' own size."""
        n, h, w, _ = images.shape
        pil = [Image.fromarray(frame) for frame in to_uint8(images)]
        inputs = self.processor(text=[prompt] * n, images=pil, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}
        # the decoder predicts at the processor's input size; one image comes back without a batch dimension
        logits = self.model(**inputs).logits.reshape(n, 1, *inputs["pixel_values"].shape[-2:])
        probs = F.interpolate(torch.sigmoid(logits.float()), size=(h, w), mode="bilinear", align_corners=False)
        return probs[:, 0].cpu().numpy()
