"""Embedding metrics: CLIP-I, CLIP-T, DINO and temporal consistency.

The math is in small pure functions over embedding matrices; the encoders only turn frames, photos and prompts into
those matrices. Every score is a plain cosine similarity in [-1, 1] (the paper's Table 1 uses the same cosine; some
later papers multiply CLIP-T by 100 or 2.5).
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPTokenizer

from magicme.inspector import is_hub_id
from magicme.video_io import to_uint8


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d) × (m, d) → (n, m) cosine similarities, in float64 so means over many pairs do not drift."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return a @ b.T


def mean_similarity(frames: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cosine over every (frame, target) pair: CLIP-I and DINO (targets = reference photos), CLIP-T (the
    prompt)."""
    return float(cosine_matrix(frames, targets).mean())


def temporal_consistency(frames: torch.Tensor) -> float:
    """Mean cosine of consecutive frames' embeddings; NaN for a single frame (nothing to compare)."""
    if frames.shape[0] < 2:
        return float("nan")
    a = torch.nn.functional.normalize(frames[:-1].double(), dim=-1)
    b = torch.nn.functional.normalize(frames[1:].double(), dim=-1)
    return float((a * b).sum(-1).mean())


def frame_indices(total: int, k: int) -> list[int]:
    """`k` evenly spaced frame indices out of `total`, first and last included; all frames when k ≤ 0 or k ≥ total."""
    if k <= 0 or k >= total:
        return list(range(total))
    if k == 1:
        return [0]
    return sorted({round(i * (total - 1) / (k - 1)) for i in range(k)})


def _load_kwargs(value: str) -> dict:
    return {} if is_hub_id(value) else {"local_files_only": True}


def _batched(images: list[np.ndarray], size: int, embed) -> torch.Tensor:
    """Embed images `size` at a time (bounded memory for long videos); float32 on the CPU."""
    return torch.cat([embed(images[start:start + size]).float().cpu() for start in range(0, len(images), size)])


def _pixels(processor, images: list[np.ndarray]) -> torch.Tensor:
    """Frames/photos as float [0, 1] (H, W, 3) → the model's normalised pixel batch (its own resize and crop)."""
    return processor(images=[to_uint8(i) for i in images], return_tensors="pt")["pixel_values"]


class ClipEncoder:
    """CLIP image and text embeddings (the projected, pre-normalisation features CLIP compares by cosine)."""

    def __init__(self, path: str, device: torch.device, batch_size: int = 32):
        kwargs = _load_kwargs(path)
        self.model = CLIPModel.from_pretrained(path, **kwargs).to(device).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(path, **kwargs)
        self.processor = AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def images(self, images: list[np.ndarray]) -> torch.Tensor:
        return _batched(images, self.batch_size, lambda batch: self.model.get_image_features(
            pixel_values=_pixels(self.processor, batch).to(self.device)).pooler_output)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return self.model.get_text_features(**tokens).pooler_output.float().cpu()


class DinoEncoder:
    """DINO CLS features (last layer, before any head), as DreamBooth's DINO metric uses them; any ViT-style
    backbone with a CLS token loads (`ViTModel` for facebook/dino-vits16, `Dinov2Model` for DINOv2)."""

    def __init__(self, path: str, device: torch.device, batch_size: int = 32):
        kwargs = _load_kwargs(path)
        self.model = AutoModel.from_pretrained(path, **kwargs).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def images(self, images: list[np.ndarray]) -> torch.Tensor:
        return _batched(images, self.batch_size, lambda batch: self.model(
            pixel_values=_pixels(self.processor, batch).to(self.device)).last_hidden_state[:, 0])
