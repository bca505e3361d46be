"""Cost of the refinement stages relative to T2V at `configs/sample/paper.yaml` settings, how close that is to
their floating-point floor, what the face stage changes outside its mask, and the seam figure of tiled blending.

    python scripts/benchmark_vcd.py [--size 128] [--frames 16] [--repeats 3] [--threads 1]

Timing: the real stage objects (magicme/stages/) on the tiny random-weight bundle, with every setting of
paper.yaml (20 steps, CFG 8, FreeU_V2, face: segment mask, Euler, 20 steps at 0.8; tiled: ×2, 20 steps at 0.2,
sharpen 0.2) scaled to the tiny bundle: T2V at size², the face crop denoised at size², tiles of size² with padding
size/16. The face stage runs on a real face (skimage's astronaut, cropped around the face, at size²; detection with dlib is part of its time),
the tiled stage on the face stage's output. Each figure is the median of `--repeats` interleaved runs.

`vcd_over_floor` = (face + tiled seconds) / T2V seconds ÷ (face + tiled FLOPs) / T2V FLOPs, the FLOPs counted with
torch's FlopCounterMode around the same stage calls (every UNet and VAE call, tiles and padding included): 1.0 means
the refinements cost exactly their share of floating-point work; above it, overheads (detection, resizes, blending).
`face_changed_outside_mask` is the share of pixels farther than `feather` px from the face segmentation that the
face stage changed (goal: exactly 0).

Seam figure: a real photo (skimage's astronaut) upscaled ×2 and split into padded tiles that a stand-in denoiser
alters differently (a per-tile gain and brightness offset, the kind of disagreement real tiles have); `seam_ratio`
is the mean gradient magnitude across the columns where tile windows begin or end over the mean elsewhere, after
blending, divided by the same ratio of the untouched photo (1.0 = blending adds no edge there); `seam_ratio_hard`
is the same for plain averaging without the smooth ramp.
Full-size FLOPs (`flops_*`): the same stages at SD1.5 shapes (UNet + v2 motion module with CFG, SD VAE; built on
the meta device: no weights, a few seconds) at paper.yaml's settings.
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

from scipy import ndimage  # noqa: E402

from magicme.embeddings import find_embeddings  # noqa: E402
from magicme.families import get_family  # noqa: E402
from magicme.freeu import install_freeu  # noqa: E402
from magicme.schema import load_sample_config  # noqa: E402
from magicme.stages import STAGES, Sample  # noqa: E402
from magicme.stages.tiled import TiledConfig, blend_tiles, tile_size  # noqa: E402
from magicme.tiny.bundle import build_tiny_bundle  # noqa: E402
from magicme.vcd.geometry import tile_windows  # noqa: E402
from magicme.vcd.resize import resize_video  # noqa: E402


PAPER = Path(__file__).resolve().parents[1] / "configs" / "sample" / "paper.yaml"


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
    """FLOPs of T2V, Face VCD (one face) and Tiled VCD at SD1.5 shapes with paper.yaml's settings: every stage
    runs `steps` steps, each tile window denoised at 512² (the tile size)."""
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
    sizes = [tile_size(b - a, d - c, tiled.tile) for a, b in windows for c, d in windows]
    return {
        "t2v": steps * step(512, 512) + count_flops(lambda: vae.decode(torch.empty(frames, 4, 64, 64, device="meta"))),
        "face": steps * step(512, 512) + vae_round_trip(512, 512),
        "tiled": sum(steps * step(h, w) + vae_round_trip(h, w) for h, w in sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="T2V size, face crop and tile size (px)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 keeps timings stable when other processes share the "
                             "cores (OpenMP threads stall when one loses its core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp()) / "tiny"
    bundle = build_tiny_bundle(root)
    s = args.size
    cfg = load_sample_config(PAPER, [
        f"model.base={bundle['sd15']}", "model.base_config=null", "model.vae=null",
        f"model.motion_module={bundle['motion_v2']}", f"model.motion_loras=[{{path: {bundle['motion_lora']}, "
        "strength: 0.6}]", f"model.embeddings_dir={bundle['embedding'].parent}", f"frames={args.frames}",
        f"width={s}", f"height={s}", f"face.size={s}", "face.detector=dlib", f"tiled.tile={s}",
        f"tiled.padding={max(8, s // 16 // 8 * 8)}", "stages=[t2v,face,tiled]", "device=cpu"])
    pipe = get_family(cfg.model.family).load(cfg.model, find_embeddings(cfg.model.embeddings_dir), device="cpu")
    install_freeu(pipe.t2v.unet, **cfg.freeu)
    stages = {name: STAGES[name](cfg) for name in cfg.stages}
    for stage in stages.values():
        stage.setup(pipe)
    sample = Sample(index=0, prompt="a photo of <tinyperson> man", negative_prompt=cfg.negative_prompt, seed=0,
                    gamma=cfg.gamma)
    portrait = skdata.astronaut()[16:240, 112:336]  # 224² around the face: a ~55 px face at 128², dlib finds it
    face_video = np.repeat(resize_video(portrait[None].astype(np.float32) / 255.0, s, s), args.frames, 0)
    calls = {
        "t2v": lambda: stages["t2v"](pipe, None, sample, torch.Generator().manual_seed(0))[0],
        "face": lambda: stages["face"](pipe, face_video, sample, torch.Generator().manual_seed(0))[0],
    }
    refined = calls["face"]()  # warm-up, and the tiled stage's input
    calls["tiled"] = lambda: stages["tiled"](pipe, refined, sample, torch.Generator().manual_seed(0))[0]

    flops = {}
    for name, fn in calls.items():
        fn()  # warm-up
        flops[name] = count_flops(fn)
    timings = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    seconds = {name: float(np.median(t)) for name, t in timings.items()}
    time_ratio = (seconds["face"] + seconds["tiled"]) / seconds["t2v"]
    flop_ratio = (flops["face"] + flops["tiled"]) / flops["t2v"]

    _, masks = stages["face"].detector.segment(face_video)
    feather = cfg.face.feather
    near = ndimage.binary_dilation(masks.any(axis=0), structure=np.ones((2 * feather + 1,) * 2))
    changed = (refined != face_video).any(axis=(0, 3))

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

    full = sd15_stage_flops(args.frames, cfg.steps)

    print(f"device={pipe.device} threads={torch.get_num_threads()}")
    print(f"shape=frames{args.frames}_{s}px_paper.yaml_{cfg.steps}steps")
    print(f"face_found={bool(masks.any())}")
    for name in calls:
        print(f"{name}_seconds={seconds[name]:.3f}")
    print(f"face_over_t2v={seconds['face'] / seconds['t2v']:.2f}")
    print(f"tiled_over_t2v={seconds['tiled'] / seconds['t2v']:.2f}")
    print(f"vcd_over_t2v={(seconds['t2v'] + seconds['face'] + seconds['tiled']) / seconds['t2v']:.2f}")
    print(f"refinement_flops_over_t2v={flop_ratio:.2f}")
    print(f"vcd_over_floor={time_ratio / flop_ratio:.2f}")
    print(f"face_changed_outside_mask={changed[~near].mean():.6f}")
    print(f"face_changed_inside_mask={changed[masks.any(axis=0)].mean():.3f}")
    print(f"flops_t2v_tflop={full['t2v'] / 1e12:.0f}")
    print(f"flops_face_over_t2v={full['face'] / full['t2v']:.2f}")
    print(f"flops_tiled_over_t2v={full['tiled'] / full['t2v']:.2f}")
    print(f"flops_vcd_over_t2v={sum(full.values()) / full['t2v']:.2f}")
    # normalised by the photo's own ratio at those columns, so only what blending adds is measured
    reference = border_ratio(big[0], borders)
    print(f"seam_ratio={border_ratio(smooth[0], borders) / reference:.3f}")
    print(f"seam_ratio_hard={border_ratio(hard[0], borders) / reference:.3f}")


if __name__ == "__main__":
    main()
