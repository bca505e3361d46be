"""Long videos with context windows: cost relative to the window forwards they need, and memory per frame count.

    python scripts/benchmark_context.py [--steps 4] [--size 64] [--length 16] [--overlap 4] [--threads 1]

Cost: T2V of 64 frames with `context: {length, overlap}` vs 16 frames without, on the tiny bundle. The expected
(FLOP-proportional) ratio counts the frames the UNet runs — windows × length — against 16, and the frames the VAE
decodes — 64 against 16 — weighted by their measured shares of the 16-frame run. `context_cost_vs_flops` =
measured / expected (goal ≤ 1.05).

Memory: each frame count (16, 64, 256; 16 without context, the others with it) is rendered in a fresh process, whose
peak resident set is read; growth should be only the latents and the decoded frames.
Printed last as `name=value` lines.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

import torch  # noqa: E402

from magicme.context import ContextSettings, context_windows  # noqa: E402
from magicme.families.sd15 import load  # noqa: E402
from magicme.schema import model_config  # noqa: E402
from magicme.tiny.bundle import build_tiny_bundle  # noqa: E402


def render(pipe, frames: int, args, context: ContextSettings | None) -> float:
    """Seconds of one T2V."""
    pipe.context = context
    start = time.perf_counter()
    pipe.text_to_video("a photo of a man", "", torch.Generator().manual_seed(0), gamma=0.1, frames=frames,
                       height=args.size, width=args.size, steps=args.steps, guidance_scale=7.5, progress=False)
    return time.perf_counter() - start


def decode_seconds(pipe, frames: int, size: int) -> float:
    latents = torch.randn(1, 4, frames, size // 8, size // 8)
    start = time.perf_counter()
    with torch.no_grad():
        pipe.t2v.decode_latents(latents, decode_chunk_size=pipe.vae_chunk)
    return time.perf_counter() - start


def memory_child(root: str, frames: int, args) -> None:
    """Render once and print the peak resident set (MB) as JSON: run in a fresh process per frame count."""
    pipe = load(model_config({"base": f"{root}/sd15", "motion_module": f"{root}/motion_module/mm_tiny_v2.ckpt"}),
                device="cpu")
    context = ContextSettings(args.length, args.overlap) if frames > args.length else None
    render(pipe, frames, args, context)
    print(json.dumps({"frames": frames, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable on a shared box)")
    parser.add_argument("--memory-child", nargs=2, metavar=("ROOT", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args)
        return

    root = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_bundle(root)
    pipe = load(model_config({"base": str(root / "sd15"), "motion_module": str(root / "motion_module/mm_tiny_v2.ckpt")}),
                device="cpu")
    context = ContextSettings(args.length, args.overlap)
    render(pipe, 16, args, None)  # warm-up
    short = statistics.median(render(pipe, 16, args, None) for _ in range(args.repeats))
    long = statistics.median(render(pipe, 64, args, context) for _ in range(args.repeats))
    windows = len(context_windows(64, args.length, args.overlap))
    decode_16 = statistics.median(decode_seconds(pipe, 16, args.size) for _ in range(args.repeats))
    decode_share = min(1.0, decode_16 / short)
    expected = (1 - decode_share) * windows * args.length / 16 + decode_share * 64 / 16
    peaks = {}
    for frames in (16, 64, 256):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(root), str(frames),
                              "--steps", "1", "--size", str(args.size), "--length", str(args.length),
                              "--overlap", str(args.overlap), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        peaks[frames] = json.loads(out)["peak_mb"]
    latent_mb = lambda f: 4 * f * (args.size // 8) ** 2 * 4 / 2**20  # noqa: E731 - one float32 latent video
    video_mb = lambda f: f * args.size ** 2 * 3 * 4 / 2**20  # noqa: E731 - the decoded float32 frames
    print(f"t2v_16_frames_s={short:.3f}")
    print(f"t2v_64_frames_context_s={long:.3f}")
    print(f"windows_64={windows}")
    print(f"decode_share_16={decode_share:.3f}")
    print(f"expected_ratio={expected:.3f}")
    print(f"measured_ratio={long / short:.3f}")
    print(f"context_cost_vs_flops={long / short / expected:.3f}")
    for frames, peak in peaks.items():
        print(f"peak_rss_mb_{frames}={peak:.0f}")
    print(f"rss_growth_16_to_256_mb={peaks[256] - peaks[16]:.0f}")
    print(f"latents_plus_frames_16_to_256_mb={(latent_mb(256) + video_mb(256)) - (latent_mb(16) + video_mb(16)):.0f}")


if __name__ == "__main__":
    main()
