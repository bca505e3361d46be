"""A tiny random-weight CLIPSeg in the layout of `CIDAS/clipseg-rd64-refined` (transformers format), for tests."""

from pathlib import Path

import torch
from transformers import (
    CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPSegTextConfig, CLIPSegVisionConfig,
    CLIPTokenizer, ViTImageProcessor,
)

IMAGE_SIZE = 64


def save_tiny_clipseg(out: Path | str, tokenizer_dir: Path | str, seed: int = 0) -> Path:
    """Model + processor (ViT image processor, CLIP tokenizer from `tokenizer_dir`) saved with `save_pretrained`."""
    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    text = CLIPSegTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, **ids)
    vision = CLIPSegVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                                 image_size=IMAGE_SIZE, patch_size=16)
    config = CLIPSegConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16,
                           reduce_dim=16, extract_layers=[1, 2], decoder_num_attention_heads=2,
                           decoder_intermediate_size=32)
    CLIPSegForImageSegmentation(config).save_pretrained(out)
    image_processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out
