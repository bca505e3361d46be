"""Cost of the refinement stages relative to T2V, and the seam figure of tiled blending.

    python scripts/benchmark_vcd.py [--size 64] [--frames 16] [--steps 20]

Timing runs at proportional tiny scale: T2V at size², Face VCD on one face track whose crop is denoised at size²
(as 512 is to 512 at full scale), Tiled VCD at ×2 with tiles of size² and padding size/16 (32 at full scale), all with
the same steps and the stages' default strengths (0.8 and 0.2), on the tiny random-weight bundle.

Seam figure: a real photo (skimage's astronaut) upscaled ×2 and split into padded tiles that a stand-in denoiser
alters differently (a per-tile gain and brightness offset, the kind of disagreement real tiles have); `seam_ratio`
is the mean gradient magnitude across the columns where tile windows begin or end over the mean elsewhere, after
blending, divided by the same ratio of the untouched photo (1.0 = blending adds no edge there); `seam_ratio_hard`
is the same for plain averaging without the smooth ramp.
FLOP count: tiny models are dominated by fixed per-call costs, so the script also counts the floating-point work
of the stages at SD1.5 shapes (UNet + v2 motion module with CFG, SD VAE; built on the meta device: no weights, a few
seconds): T2V 512² × `--frames` × `--steps`, the face crop at 512² (strength 0.8), 1024² in the stage's tiles
(strength 0.2), each stage with its VAE encode/decode (`flops_*_over_t2v`): the cost floor a GPU can approach.
Figures are printed last as `name=value` lines.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel  # noqa: E402
from skimage import data as skdata  # noqa: E402

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from magicme.families.sd15 import load  # noqa: E402
from magicme.schema import load_sample_config, model_config  # noqa: E402
from magicme.stages import STAGES, Sample  # noqa: E402
from magicme.stages.face import refine_faces  # noqa: E402
from magicme.stages.tiled import TiledConfig, blend_tiles  # noqa: E402
from magicme.steps import denoising_steps  # noqa: E402
from magicme.tiny.sd import build_tiny_bundle  # noqa: E402
from magicme.vcd.geometry import tile_windows  # noqa: E402
from magicme.vcd.resize import resize_video  # noqa: E402


def border_ratio(image: np.ndarray, borders: list[int]) -> float:
    """Mean |horizontal gradient| at the columns where tile windows begin or end, over its mean elsewhere."""
    grad = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))  # grad[i] is between columns i and i + 1
    at = np.zeros(len(grad), bool)
    for b in borders:
        at[max(0, b - 2):b + 1] = True
    return float(grad[at].mean() / grad[~at].mean())


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sd15_stage_flops(frames: int, steps: int) -> dict[str, int]:
    """FLOPs of T2V, Face VCD (one face) and Tiled VCD at SD1.5 shapes with the stages' default settings."""
    with torch.device("meta"):
        unet2d = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD1.5's UNet
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(use_motion_mid_block=True), load_weights=False)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)

    def step(h: int, w: int) -> int:  # one denoising step with CFG (batch 2)
        sample = torch.empty(2, 4, frames, h // 8, w // 8, device="meta")
        text = torch.empty(2 * frames, 77, 768, device="meta")
        return count_flops(lambda: unet(sample, torch.tensor([10, 10], device="meta"), encoder_hidden_states=text))

    def vae_round_trip(h: int, w: int) -> int:
        return (count_flops(lambda: vae.encode(torch.empty(frames, 3, h, w, device="meta")))
                + count_flops(lambda: vae.decode(torch.empty(frames, 4, h // 8, w // 8, device="meta"))))

    tiled = TiledConfig()
    windows = tile_windows(1024, tiled.tile, tiled.padding)
    sides = [stop - start for start, stop in windows]
    return {
        "t2v": steps * step(512, 512) + count_flops(lambda: vae.decode(torch.empty(frames, 4, 64, 64, device="meta"))),
        "face": denoising_steps(0.8, steps) * step(512, 512) + vae_round_trip(512, 512),
        "tiled": sum(denoising_steps(tiled.strength, steps) * step(h, w) + vae_round_trip(h, w)
                     for h in sides for w in sides),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 keeps timings stable when other processes share the "
                             "cores (OpenMP threads stall when one loses its core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_bundle(root)
    model = model_config({"base": str(root / "sd15"), "motion_module": str(root / "motion_module/mm_tiny_v2.ckpt")})
    pipe = load(model, device="auto")
    s, prompt, common = args.size, "a photo of a man", dict(gamma=0.1, guidance_scale=7.5, progress=False)

    def t2v():
        return pipe.text_to_video(prompt, "", torch.Generator().manual_seed(0), frames=args.frames, height=s,
                                  width=s, steps=args.steps, **common)

    video = t2v()
    face_track = [[(s // 2 - s // 12, s // 3, s // 2 + s // 12, s // 3 + s // 6)] * args.frames]

    def face():
        refine_faces(video, face_track, lambda crop: pipe.video_to_video(
            crop, prompt, "", torch.Generator().manual_seed(0), strength=0.8, steps=args.steps, **common),
            crop_factor=3.0, size=s, feather=5)

    tiled_stage = STAGES["tiled"](load_sample_config(None, [f"steps={args.steps}", "guidance_scale=7.5",
                                                            f"tiled.tile={s}", f"tiled.padding={max(8, s // 16)}"]))
    tiled_stage.setup(pipe)
    sample = Sample(index=0, prompt=prompt, negative_prompt="", seed=0, gamma=0.1)

    def tiled():
        tiled_stage(pipe, video, sample, torch.Generator().manual_seed(0))

    timings = {"t2v": [], "face": [], "tiled": []}
    for fn in (t2v, face, tiled):
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("t2v", t2v), ("face", face), ("tiled", tiled)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    t2v_s, face_s, tiled_s = (float(np.median(timings[k])) for k in ("t2v", "face", "tiled"))

    photo = resize_video(skdata.astronaut()[None].astype(np.float32) / 255.0, 256, 256)
    big = resize_video(photo, 512, 512)
    rng = np.random.default_rng(0)

    def disagreeing(tile):
        return np.clip(tile * rng.uniform(0.95, 1.05) + rng.uniform(-0.08, 0.08), 0, 1).astype(np.float32)

    tile, padding = 256, 32
    windows = tile_windows(512, tile, padding)
    borders = sorted({stop for _, stop in windows[:-1]} | {start for start, _ in windows[1:]})
    smooth = blend_tiles(big, tile, padding, disagreeing)
    hard = blend_tiles(big, tile, padding, disagreeing, ramp=0)

    flops = sd15_stage_flops(args.frames, args.steps)

    print(f"device={pipe.device}")
    print(f"shape=frames{args.frames}_{s}px_{args.steps}steps")
    print(f"t2v_seconds={t2v_s:.3f}")
    print(f"face_seconds={face_s:.3f}")
    print(f"tiled_seconds={tiled_s:.3f}")
    print(f"face_over_t2v={face_s / t2v_s:.2f}")
    print(f"tiled_over_t2v={tiled_s / t2v_s:.2f}")
    print(f"vcd_over_t2v={(t2v_s + face_s + tiled_s) / t2v_s:.2f}")
    print(f"flops_t2v_tflop={flops['t2v'] / 1e12:.0f}")
    print(f"flops_face_over_t2v={flops['face'] / flops['t2v']:.2f}")
    print(f"flops_tiled_over_t2v={flops['tiled'] / flops['t2v']:.2f}")
    print(f"flops_vcd_over_t2v={sum(flops.values()) / flops['t2v']:.2f}")
    # normalised by the photo's own ratio at those columns, so only what blending adds is measured
    reference = border_ratio(big[0], borders)
    print(f"seam_ratio={border_ratio(smooth[0], borders) / reference:.3f}")
    print(f"seam_ratio_hard={border_ratio(hard[0], borders) / reference:.3f}")


if __name__ == "__main__":
    main()
