"""Training speed: steps/s and peak memory of the ID-token training step, as train.py runs it.

    python scripts/benchmark_training.py                  # tiny bundle on this machine (CPU or GPU)
    python scripts/benchmark_training.py --full-size      # SD1.5 shapes, random weights, CUDA only

Each step is the trainer's own `train_step` (magicme/training/trainer.py) on the trainer's batches
(`TrainingBatches`), loss (`DiffusionLoss`) and optimizer (`identity_optimizer`): VAE encode, SD1.5 noise
schedule, text encoder with the spliced ID vectors, UNet forward and backward, masked loss, clipping, AdamW; the
loss is read from the device every LOSS_READ_EVERY steps, as the trainer does. --compile is the trainer's regional
compilation (`compile_unet`); its compile time is printed apart from the step time. --full-size builds SD1.5-shaped UNet/VAE/text encoder with random weights and
times batch 4 × 512² (goal on an H100: 400 steps ≤ 30 s at ≤ 12 GB). Figures are printed last as `name=value`.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from magicme.families.sd15 import SD15_BETAS  # noqa: E402
from magicme.training.config import TrainConfig  # noqa: E402
from magicme.training.data import TrainImage, TrainingBatches, working_size  # noqa: E402
from magicme.training.tokens import IdentityEmbedding  # noqa: E402
from magicme.speed import allow_tf32, compile_unet  # noqa: E402
from magicme.training.trainer import (  # noqa: E402
    DTYPES, LOSS_READ_EVERY, DiffusionLoss, identity_optimizer, read_losses, train_step,
)

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280))
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
TOKENS = 4


def models(full_size: bool):
    """(unet, vae, text encoder, resolution): SD1.5 shapes with random weights, or the tiny bundle."""
    if full_size:
        return (UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE),
                CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), 512)
    from magicme.families.sd15 import load_base
    from magicme.tiny.bundle import build_tiny_bundle

    root = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_bundle(root)
    base = load_base(str(root / "sd15"), None, torch.float32)
    return base.unet, base.vae, base.text_encoder, 64


@torch.no_grad()
def timed(work, repeats: int, device: torch.device) -> float:
    """Seconds per call of `work` (the VAE encode alone: how much of a step the frozen encoder costs)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="SD1.5 shapes, batch 4 × 512² (CUDA only)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--mixed-precision", default="bf16", choices=list(DTYPES),
                        help="as train.py's mixed_precision; a CPU always runs 'no'")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="the trainer's regional compile of the UNet")
    parser.add_argument("--channels-last", action="store_true", help="UNet and VAE in channels-last memory format")
    args = parser.parse_args()
    if args.full_size and not torch.cuda.is_available():
        sys.exit("error: --full-size needs a CUDA GPU (SD1.5 shapes take minutes per step on a CPU); "
                 "run without --full-size for the tiny bundle")
    precision = args.mixed_precision if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=precision)
    device, dtype = accelerator.device, DTYPES[precision]
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as train.py
    allow_tf32(True)  # train.py's default
    torch.manual_seed(0)
    unet, vae, text, resolution = models(args.full_size)
    text.requires_grad_(False)
    vocab = text.get_input_embeddings().num_embeddings
    text.resize_token_embeddings(vocab + TOKENS, mean_resizing=False)
    identity = IdentityEmbedding(text.get_input_embeddings(), list(range(vocab, vocab + TOKENS)),
                                 torch.randn(TOKENS, text.config.hidden_size) * 0.01)
    text.set_input_embeddings(identity)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig),
                          {"name": "bench", "images_dir": ".", "resolution": resolution, "batch_size": args.batch_size})
    optimizer = identity_optimizer(identity, cfg, device)
    text, optimizer = accelerator.prepare(text, optimizer)
    unet = unet.requires_grad_(False).to(device, dtype)
    vae = vae.requires_grad_(False).to(device, dtype)
    if args.channels_last:
        unet, vae = unet.to(memory_format=torch.channels_last), vae.to(memory_format=torch.channels_last)
    if args.compile:
        compile_unet(unet)
    loss_fn = DiffusionLoss(vae, unet, DDPMScheduler(**SD15_BETAS), cfg.noise_offset, dtype)
    rng = np.random.default_rng(0)
    side = working_size(resolution)
    photos = [TrainImage(Path(f"{i}.png"), rng.random((side, side, 3), dtype=np.float32),
                         (rng.random((side, side)) > 0.3).astype(np.float32)) for i in range(8)]
    batches = TrainingBatches(photos, cfg, "", "0/0", device)
    input_ids = torch.randint(0, vocab, (args.batch_size, 77))
    input_ids[:, 4:4 + TOKENS] = torch.arange(vocab, vocab + TOKENS)

    pending = []

    def step(k: int) -> None:
        pending.append(train_step(accelerator, loss_fn, text, identity, optimizer, batches(k), input_ids,
                                  torch.Generator().manual_seed(k), cfg.max_grad_norm, False))
        if (k + 1) % LOSS_READ_EVERY == 0:
            read_losses(pending, k + 1, Path("."))
            pending.clear()

    start = time.perf_counter()
    step(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    first_step = time.perf_counter() - start
    for k in range(1, 3):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for k in range(args.steps):
        step(3 + k)
    read_losses(pending, 3 + args.steps, Path("."))
    seconds = (time.perf_counter() - start) / args.steps
    pixels = batches(0).pixels.to(dtype)
    vae_seconds = timed(lambda: vae.encode(pixels), args.steps, device)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(f"device={torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"shape={'sd15' if args.full_size else 'tiny'}_batch{args.batch_size}_{resolution}px_{precision}"
          f"{'_checkpointing' if args.gradient_checkpointing else ''}{'_compiled' if args.compile else ''}"
          f"{'_channels_last' if args.channels_last else ''}")
    print(f"first_step_s={first_step:.1f}")  # with --compile: the compilation
    print(f"train_steps_per_s={1 / seconds:.2f}")
    print(f"train_400_steps_s={400 * seconds:.1f}")
    print(f"vae_encode_ms_per_step={1000 * vae_seconds:.1f}")
    print(f"peak_memory_gb={peak:.2f}")


if __name__ == "__main__":
    main()
