"""Training speed: steps/s and peak memory of the ID-token loop.

    python scripts/benchmark_training.py                  # tiny bundle on this machine (CPU or GPU)
    python scripts/benchmark_training.py --full-size      # SD1.5 shapes, random weights, CUDA only

--full-size builds SD1.5-shaped UNet/VAE/text encoder with random weights (configs/models/sd15 if present, else
the SD1.5 values below) and times training steps at batch 4 × 512² in bf16 with SDPA, the shape of a real run
(400 steps; goal on an H100: ≤ 30 s, ≤ 12 GB). Figures are printed last as `name=value` lines.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

import torch  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from magicme.models import SD15_BETAS  # noqa: E402
from magicme.training.loss import masked_mse  # noqa: E402

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280))
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49412, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")


def full_size_models(dtype):
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**SD15_UNET).to(dtype)
        vae = AutoencoderKL(**SD15_VAE).to(dtype)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    return unet, vae, text, 512, 4


def tiny_models():
    from magicme.models import load_base
    from magicme.tiny.sd import build_tiny_bundle

    root = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_bundle(root)
    base = load_base(str(root / "sd15"), None, torch.float32)
    return base.unet, base.vae, base.text_encoder, 64, 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU)")
    args = parser.parse_args()
    if args.full_size and not torch.cuda.is_available():
        sys.exit("error: --full-size needs a CUDA GPU (SD1.5 shapes take minutes per step on a CPU); "
                 "run without --full-size for the tiny bundle")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    if device.type == "cpu":
        dtype = torch.float32
    unet, vae, text, size, batch = full_size_models(dtype) if args.full_size else tiny_models()
    unet.to(device, dtype).requires_grad_(False)
    vae.to(device, dtype).requires_grad_(False)
    text.to(device).requires_grad_(False)
    embedding = text.get_input_embeddings()
    embedding.weight.requires_grad_(True)
    if args.compile:
        unet = torch.compile(unet)
    optimizer = torch.optim.AdamW([embedding.weight], lr=1e-3)
    scheduler = DDPMScheduler(**SD15_BETAS)
    ids = torch.randint(0, embedding.num_embeddings, (batch, 77), device=device)
    pixels = torch.rand(batch, 3, size, size, device=device, dtype=dtype) * 2 - 1
    mask = torch.ones(batch, 1, size // 8, size // 8, device=device)

    def step():
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            hidden = text(ids)[0]
            pred = unet(scheduler.add_noise(latents, noise, t), t, hidden.to(dtype)).sample
        loss = masked_mse(pred, noise, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(f"device={torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"shape={'sd15' if args.full_size else 'tiny'}_batch{batch}_{size}px_{dtype}".replace("torch.", ""))
    print(f"train_steps_per_s={1 / seconds:.2f}")
    print(f"train_400_steps_s={400 * seconds:.1f}")
    print(f"peak_memory_gb={peak:.2f}")


if __name__ == "__main__":
    main()
