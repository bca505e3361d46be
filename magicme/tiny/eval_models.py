"""Tiny random-weight evaluation models in the real Hugging Face formats: a `CLIPModel` laid out like
`openai/clip-vit-large-patch14` (model + CLIP tokenizer + CLIP image processor config) and a DINO-style `ViTModel`
like `facebook/dino-vits16` (model + ViT image processor config). The evaluation loads them exactly as it loads the
real checkpoints, so every loader and preprocessing step is tested; their scores are meaningless."""

from pathlib import Path

import torch
from transformers import (
    CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig, ViTConfig,
    ViTImageProcessor, ViTModel,
)

from magicme.tiny.sd import save_tiny_tokenizer

IMAGE_SIZE = 32
PATCH_SIZE = 16
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_tiny_clip(out: Path | str, seed: int = 0) -> Path:
    """CLIPModel (2-layer text and vision towers, 16-d projection) + CLIPProcessor, via `save_pretrained`."""
    out = Path(out)
    tokenizer = save_tiny_tokenizer(out)
    torch.manual_seed(seed)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, **ids)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    CLIPModel(config).save_pretrained(out)
    # The real checkpoint's preprocessing (resize shortest side, centre crop, CLIP's mean/std) at the tiny size.
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def save_tiny_dino(out: Path | str, seed: int = 0) -> Path:
    """ViTModel with DINO ViT-S/16's structure (CLS token, patch 16) at width 32, + its processor. The pooler
    is saved so that `AutoModel` loads without newly initialised weights; the DINO metric does not use it."""
    out = Path(out)
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, qkv_bias=True)
    ViTModel(config).save_pretrained(out)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD, resample=3).save_pretrained(out)
    return out
