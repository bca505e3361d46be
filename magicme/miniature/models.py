"""The miniature text-to-video model's parts, in SD1.5's layout at a CPU's size, and the classifier that measures it.

The VAE has SD's four levels (×8: a 64² picture is an 8×8×4 latent), the UNet SD1.5's cross-attention blocks at
two levels, the text encoder is CLIP's with one token per word of the world (`magicme.tiny.sd.save_tiny_tokenizer`),
and the motion module is AnimateDiff's (v3 layout: no mid-block module, 32 frames). They are written by the same
functions as the tiny random-weight bundle, so `sample.py` and `train.py` read them as any downloaded model.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

UNET_CHANNELS = (32, 64)
TEXT_WIDTH = 64


def text_encoder(tokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def unet(sample_size: int = 8) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=UNET_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
    )


def vae(size: int = 64) -> AutoencoderKL:
    """SD's four levels (three ×2 downsamplings) with narrow layers: cheap at 64², and latents are 8×8."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, sample_size=size,
    )


def motion_adapter() -> MotionAdapter:
    """AnimateDiff v3's shape (32 frames, no mid-block module); 8 heads and 32 groups, as the loader expects.
    Each temporal transformer's output projection starts at zero, as AnimateDiff's `zero_initialize`: before
    training the module changes nothing."""
    adapter = MotionAdapter(
        block_out_channels=UNET_CHANNELS, motion_layers_per_block=1, motion_num_attention_heads=8,
        motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False,
    )
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return adapter


class Classifier(nn.Module):
    """A small CNN reading a 64² picture (at 32²) into shape, colour and background logits: the measuring tool."""

    def __init__(self, shapes: int, colours: int, backgrounds: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.AvgPool2d(2), nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.sizes = (shapes, colours, backgrounds)
        self.head = nn.Linear(64, sum(self.sizes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images (N, 3, H, W) in [0, 1] → (shape, colour, background) logits."""
        return self.head(self.features(images * 2 - 1)).split(self.sizes, dim=1)


def save_classifier(model: Classifier, path: Path) -> None:
    from magicme.checkpoint_io import save_tensors

    save_tensors({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def load_classifier(path: Path, shapes: int, colours: int, backgrounds: int) -> Classifier:
    from safetensors.torch import load_file

    model = Classifier(shapes, colours, backgrounds)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
