"""T2V through magicme vs stock diffusers `AnimateDiffPipeline`, same model, frames and steps.

    python scripts/benchmark_sampling.py [--tiny models/tiny] [--frames 16] [--steps 10] [--size 64] [--repeats 5]
    python scripts/benchmark_sampling.py --family sdxl     # the tiny SD-XL bundle vs stock `AnimateDiffSDXLPipeline`

Runs are interleaved in one process (ours, stock, ours, …) so that warm-up and machine noise hit both alike; the
median of each is compared. The figures are printed last as `name=value` lines:
`t2v_overhead_ratio` = ours / stock with the same (diffusers) numerics (goal ≤ 1.03),
`t2v_original_numerics_ratio` = ours with the original-AnimateDiff GroupNorms / stock (SD1.5 only), seconds of
each, and peak memory (CUDA: allocated bytes; CPU: the process's peak resident set).
"""

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

import torch  # noqa: E402
from diffusers import AnimateDiffPipeline, AnimateDiffSDXLPipeline  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from magicme.embeddings import find_embeddings  # noqa: E402
from magicme.devices import resolve_device, resolve_dtype  # noqa: E402
from magicme.families import get_family  # noqa: E402
from magicme.motion_module import load_motion_adapter  # noqa: E402
from magicme.schema import model_config  # noqa: E402
from magicme.tiny.bundle import build_tiny_bundle  # noqa: E402


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", default=None, help="tiny bundle folder (built in a temp folder if not given)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15")
    args = parser.parse_args()

    root = Path(args.tiny) if args.tiny else Path(tempfile.mkdtemp()) / "tiny"
    if not (root / "sd15").is_dir():
        build_tiny_bundle(root)
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    sdxl = args.family == "sdxl"
    files = ("sdxl", "mm_sdxl_tiny_beta.ckpt", "embeddings_sdxl") if sdxl else ("sd15", "mm_tiny_v2.ckpt", "embeddings")
    model = model_config({"family": args.family, "base": str(root / files[0]),
                          "motion_module": str(root / "motion_module" / files[1]), "animatediff_numerics": "diffusers"})
    load = get_family(args.family).load
    ours = load(model, find_embeddings(root / files[2]), device=args.device)
    original = None if sdxl else load(OmegaConf.merge(model, {"animatediff_numerics": "original"}), device=args.device)
    adapter, _ = load_motion_adapter(model.motion_module, family=args.family)
    stock = (AnimateDiffSDXLPipeline if sdxl else AnimateDiffPipeline).from_pretrained(
        model.base, motion_adapter=adapter, torch_dtype=dtype, scheduler=get_family(args.family).make_scheduler(model.scheduler)).to(device)
    stock.set_progress_bar_config(disable=True)
    call = dict(num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
                guidance_scale=7.5)
    prompt, negative = "a photo of a man walking", "blurry"

    def t2v(pipe):
        pipe.text_to_video(prompt, negative, torch.Generator().manual_seed(0), gamma=0.1, frames=args.frames,
                           height=args.size, width=args.size, steps=args.steps, guidance_scale=7.5, progress=False)

    def run_stock():
        stock(prompt=prompt, negative_prompt=negative, generator=torch.Generator().manual_seed(0), output_type="np",
              **call)

    runs = {"ours": lambda: t2v(ours), "stock": run_stock}
    if original is not None:
        runs["original"] = lambda: t2v(original)
    seconds = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds[name].append(timed(fn, device))
    ours_med, stock_med = (statistics.median(seconds[n]) for n in ("ours", "stock"))
    print(f"device={device}")
    print(f"family={args.family}")
    print(f"shape=frames{args.frames}x{args.size}x{args.size}x{args.steps}steps")
    print(f"t2v_seconds_ours={ours_med:.4f}")
    print(f"t2v_seconds_stock={stock_med:.4f}")
    print(f"t2v_overhead_ratio={ours_med / stock_med:.3f}")
    if original is not None:
        original_med = statistics.median(seconds["original"])
        print(f"t2v_seconds_original_numerics={original_med:.4f}")
        print(f"t2v_original_numerics_ratio={original_med / stock_med:.3f}")
    print(f"peak_memory_mb={peak_memory_mb(device):.0f}")


if __name__ == "__main__":
    main()
