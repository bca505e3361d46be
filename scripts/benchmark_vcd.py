"""Cost of Face VCD and Tiled VCD relative to T2V, and the seam figure of tiled blending.

    python scripts/benchmark_vcd.py [--tiny models/tiny] [--size 64] [--frames 16] [--steps 20] [--repeats 3]

Everything runs at the original graph's proportions scaled by size/512: T2V at size², Face VCD on a square crop
denoised at size² (strength 0.8), Tiled VCD ×2 with tile = size and overlap = size/8 (strength 0.2), the same
steps and CFG 7.5 everywhere. The face stage uses a fixed box (a face of 18 % of the frame, like dlib's box on the
512² astronaut photo) because the tiny random-weight models draw no faces; detection is timed apart with dlib on
the astronaut photo at 512². Medians of `--repeats` runs, interleaved.

Seam figures come from the astronaut photo (`--frames` random pans) through the tiled stage:
`seam_ratio` = gradient across tile borders over elsewhere for the tiny model's tiles, feathered (goal ≤ 1.1; the
random-weight tiles are unrelated noise, so this is the blend's own contribution); `seam_ratio_hard` = the same
tiles stitched with hard cuts; `seam_ratio_drift` = tiles that are the input shifted by a per-tile colour offset
(±0.1), relative to the input's own figure.

Tiny models are dominated by fixed costs, so the script also counts the FLOPs of the original graph's settings at
SD1.5 shapes (UNet + v2 motion module with CFG, SD VAE; models built on the meta device: no weights, seconds):
T2V 512² × 16 frames × `--steps`, the face crop at 512² with strength 0.8, 1024² tiles at strength 0.2, each stage
with its VAE encode/decode (`flops_*_over_t2v`). Printed last as `name=value` lines.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel  # noqa: E402
from skimage.data import astronaut  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from magicme.embeddings import find_embeddings  # noqa: E402
from magicme.models import load_pipeline  # noqa: E402
from magicme.pipeline import denoising_steps  # noqa: E402
from magicme.tiny.sd import build_tiny_bundle  # noqa: E402
from magicme.vcd import run_face_stage, run_tiled_stage  # noqa: E402
from magicme.vcd.detect import DlibDetector  # noqa: E402
from magicme.vcd.paste import resize_video  # noqa: E402
from magicme.vcd.tiles import blend_tiles, border_gradient_ratio, seam_ratio, tile_grid, tile_weights  # noqa: E402
from magicme.vcd.upscale import upscale_video  # noqa: E402


class CapturingPipe:
    """Forwards `video_to_video` to the real pipeline and keeps each tile's output (for the hard-stitch figure)."""

    def __init__(self, pipe):
        self.pipe, self.device, self.outputs = pipe, pipe.device, []

    def video_to_video(self, *args, **kwargs):
        self.outputs.append(self.pipe.video_to_video(*args, **kwargs))
        return self.outputs[-1]


def panned_astronaut(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """`frames` random 256² crops of the astronaut photo, resized to size²: real-image content that moves."""
    image = astronaut().astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    crops = [image[y:y + 256, x:x + 256] for y, x in rng.integers(0, 256, (frames, 2))]
    return resize_video(np.stack(crops), size, size)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sd15_stage_flops(frames: int, steps: int) -> dict[str, float]:
    """FLOPs of T2V, Face VCD and Tiled VCD at SD1.5 shapes with the original graph's settings."""
    with torch.device("meta"):
        unet2d = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD1.5's UNet
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(use_motion_mid_block=True), load_weights=False)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)

    def step(size: int) -> int:  # one denoising step with CFG (batch 2)
        sample = torch.empty(2, 4, frames, size // 8, size // 8, device="meta")
        text = torch.empty(2 * frames, 77, 768, device="meta")
        return count_flops(lambda: unet(sample, torch.tensor([10, 10], device="meta"), encoder_hidden_states=text))

    def encode(size: int) -> int:
        return count_flops(lambda: vae.encode(torch.empty(frames, 3, size, size, device="meta")))

    def decode(size: int) -> int:
        return count_flops(lambda: vae.decode(torch.empty(frames, 4, size // 8, size // 8, device="meta")))

    tiles = tile_grid(1024, 1024, 512, 64)
    tile = tiles[0][2]
    return {
        "t2v": steps * step(512) + decode(512),
        "face": denoising_steps(0.8, steps) * step(512) + encode(512) + decode(512),
        "tiled": len(tiles) * (denoising_steps(0.2, steps) * step(tile) + encode(tile) + decode(tile)),
    }


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", default=None, help="tiny bundle folder (built in a temp folder if not given)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 keeps timings stable on a shared machine (OpenMP threads stall when "
                             "another process takes a core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(args.tiny) if args.tiny else Path(tempfile.mkdtemp()) / "tiny"
    if not (root / "sd15").is_dir():
        build_tiny_bundle(root)
    model = OmegaConf.create({"base": str(root / "sd15"), "motion_module": str(root / "motion_module/mm_tiny_v2.ckpt"),
                              "scheduler": "ddim", "animatediff_numerics": "original"})
    pipe = load_pipeline(model, find_embeddings(root / "embeddings"), device=args.device)
    prompt, negative = "a photo of embedding:tinyperson man", "blurry"
    run = {"steps": args.steps, "guidance_scale": 7.5, "gamma": 0.1}
    size = args.size
    face_px = round(0.18 * size)
    face_box = ((size - face_px) / 2, size * 0.15, (size + face_px) / 2, size * 0.15 + face_px)
    face_cfg = {"detector": "dlib", "size": size}
    tiled_cfg = {"tile": size, "overlap": size // 8}
    video = pipe.text_to_video(prompt, negative, torch.Generator().manual_seed(0), frames=args.frames, height=size,
                               width=size, progress=False, **run)

    runs = {
        "t2v": lambda: pipe.text_to_video(prompt, negative, torch.Generator().manual_seed(0), frames=args.frames,
                                          height=size, width=size, progress=False, **run),
        "face": lambda: run_face_stage(pipe, video, prompt, negative, torch.Generator().manual_seed(0), face_cfg,
                                       detector=lambda v: [[face_box]] * len(v), **run),
        "tiled": lambda: run_tiled_stage(pipe, video, prompt, negative, torch.Generator().manual_seed(0), tiled_cfg,
                                         **run),
    }
    seconds = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds[name].append(timed(fn))
    t2v, face, tiled = (statistics.median(seconds[n]) for n in ("t2v", "face", "tiled"))

    photo = np.stack([astronaut().astype(np.float32) / 255.0] * args.frames)
    dlib_seconds = timed(lambda: DlibDetector()(photo)) / args.frames

    clip = panned_astronaut(args.frames, size)
    capture = CapturingPipe(pipe)
    feathered, info = run_tiled_stage(capture, clip, prompt, negative, torch.Generator().manual_seed(0), tiled_cfg,
                                      **run)
    height, width = feathered.shape[1:3]
    tiles, weights = tile_grid(height, width, size, size // 8), tile_weights(height, width, size, size // 8)
    hard = blend_tiles(capture.outputs, tiles, [(w > 0.5).astype(np.float32) for w in weights], height, width)
    upscaled = upscale_video(clip, 2.0)
    offsets = np.random.default_rng(0).uniform(-0.1, 0.1, (len(tiles), 3)).astype(np.float32)
    drifted = blend_tiles([upscaled[:, y:y + h, x:x + w] + o for (y, x, h, w), o in zip(tiles, offsets)], tiles,
                          weights, height, width)

    flops = sd15_stage_flops(args.frames, args.steps)

    print(f"device={pipe.device}")
    print(f"threads={torch.get_num_threads()}")
    print(f"shape=frames{args.frames}x{size}x{size}x{args.steps}steps tiles={len(info['tiles'])}x{tiles[0][2]}px")
    print(f"t2v_seconds={t2v:.3f}")
    print(f"face_seconds={face:.3f}")
    print(f"tiled_seconds={tiled:.3f}")
    print(f"dlib_seconds_per_512_frame={dlib_seconds:.3f}")
    print(f"face_over_t2v={face / t2v:.2f}")
    print(f"tiled_over_t2v={tiled / t2v:.2f}")
    print(f"vcd_over_t2v={(t2v + face + tiled) / t2v:.2f}")
    print(f"flops_t2v_tflop={flops['t2v'] / 1e12:.0f}")
    print(f"flops_face_over_t2v={flops['face'] / flops['t2v']:.2f}")
    print(f"flops_tiled_over_t2v={flops['tiled'] / flops['t2v']:.2f}")
    print(f"flops_vcd_over_t2v={sum(flops.values()) / flops['t2v']:.2f}")
    print(f"seam_ratio={border_gradient_ratio(np.clip(feathered, 0, 1), size, size // 8):.3f}")
    print(f"seam_ratio_hard={border_gradient_ratio(np.clip(hard, 0, 1), size, size // 8):.3f}")
    print(f"seam_ratio_drift={seam_ratio(drifted, upscaled, size, size // 8):.3f}")


if __name__ == "__main__":
    main()
