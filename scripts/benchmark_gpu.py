"""Full-size speed and memory on a CUDA GPU, with random weights of the real shapes (no downloads).

    python scripts/benchmark_gpu.py [--precision fp16|bf16] [--channels-last] [--compile] [--steps 25]
        [--guidance-scale 7.5] [--scheduler ddim] [--sdpa-backend auto|flash|efficient|cudnn|math] [--peak-tflops N]
    python scripts/benchmark_gpu.py --steps 4 --guidance-scale 1 --scheduler euler-trailing   # the few-step path

Builds SD1.5 from configs/models/sd15 (UNet 320/640/1280/1280, CLIP-L text encoder, SD VAE) and a v2 motion module
(mm_sd_v15_v2 shape) in memory and times, on 16 × 512² frames: T2V through magicme and through stock diffusers `AnimateDiffPipeline` on the
same components; the Face VCD stage on a real face (skimage's astronaut at 512², dlib detection included, crop
denoised at 512², strength 0.8); the Tiled VCD stage (×2 Lanczos, 4 tiles of 512 + 32 padding, strength 0.2). Every
side is the median of `--repeats` interleaved runs. Then the paper preset: T2V, Face and Tiled VCD at
configs/sample/paper.yaml's settings (FreeU_V2, 20 steps, CFG 8, face segment mask) and `vcd_over_floor` =
(VCD / T2V seconds) ÷ (VCD / T2V FLOPs), FLOPs counted with torch's FlopCounterMode around the same calls.
MFU per stage = FLOPs / seconds / the card's dense fp16/bf16 tensor peak (PEAK_TFLOPS by device name, from the
vendors' datasheets; `--peak-tflops` for another card). `--compile` is magicme's regional compilation; its first
call is timed apart (`compile_seconds`). Prints a table, then `name=value` lines (seconds, peak GiB, ratios).
The ID-token training step is timed by `scripts/benchmark_training.py --full-size`.
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
from diffusers import AnimateDiffPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from magicme.families.sd15 import make_scheduler  # noqa: E402
from magicme.freeu import install_freeu  # noqa: E402
from magicme.parity import apply_animatediff_numerics  # noqa: E402
from magicme.pipeline import MagicPipeline  # noqa: E402
from magicme.tiny.sd import save_tiny_tokenizer  # noqa: E402
from magicme.schema import load_sample_config  # noqa: E402
from magicme.speed import (  # noqa: E402
    SDPA_BACKENDS, attention_kernel, attention_shape, compile_unet, fastest_sdpa, fp8_problem, quantize_fp8,
)
from magicme.stages import STAGES, Sample  # noqa: E402
from magicme.vcd.resize import resize_video  # noqa: E402
from skimage import data as skdata  # noqa: E402

SD15 = Path(__file__).resolve().parents[1] / "configs" / "models" / "sd15"  # SD1.5's own component configs
PAPER = Path(__file__).resolve().parents[1] / "configs" / "sample" / "paper.yaml"
# dense fp16/bf16 tensor-core TFLOP/s (fp32 accumulate, no sparsity), vendors' datasheets; first match wins
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
               ("A100", 312.0), ("L40S", 362.1), ("RTX 4090", 165.2), ("L4", 121.0))
SCHEDULERS = {"ddim": {"name": "ddim"},
              "euler-trailing": {"name": "euler", "kwargs": {"timestep_spacing": "trailing"}}}


def build(dtype: torch.dtype, numerics: str, scheduler: dict) -> MagicPipeline:
    # the benchmark's prompts are made of characters, so the tiny tokenizer's ids fit the 49408-token embedding
    tokenizer = save_tiny_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    text_config = CLIPTextConfig.from_pretrained(SD15, subfolder="text_encoder", bos_token_id=tokenizer.bos_token_id,
                                                 eos_token_id=tokenizer.eos_token_id)
    with torch.device("cuda"):
        unet2d = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15, subfolder="unet"))
        adapter = MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15, subfolder="vae"))
        text = CLIPTextModel(text_config)
    apply_animatediff_numerics(unet, "v2", numerics)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, motion_adapter=None,
                               scheduler=make_scheduler(OmegaConf.create(scheduler))).to("cuda", dtype)
    return MagicPipeline(pipe, motion_version="v2", max_frames=32)


def timed(fn) -> tuple[float, float]:
    """Seconds and peak GiB of one call (after a synchronised start)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def count_flops(fn) -> int:
    """FLOPs of one call, counted on the aten ops of an eager run (compiled kernels would hide them)."""
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


@torch.no_grad()
def fp8_error(unet, frames: int, dtype: torch.dtype) -> float:
    """Quantize `unet` to float8 in place; returns ‖ε_fp8 − ε‖ / ‖ε‖ on fixed random inputs (one CFG-sized batch at
    a mid-schedule timestep)."""
    generator = torch.Generator("cuda").manual_seed(0)
    sample = torch.randn(2, 4, frames, 64, 64, device="cuda", dtype=dtype, generator=generator)
    text = torch.randn(2 * frames, 77, 768, device="cuda", dtype=dtype, generator=generator)
    reference = unet(sample, 500, text).sample.float()
    quantize_fp8(unet)
    quantized = unet(sample, 500, text).sample.float()
    return float((quantized - reference).norm() / reference.norm())


def paper_stages(magic: MagicPipeline, frames: int, face_video: np.ndarray, sample_prompt: str) -> dict:
    """T2V, Face and Tiled VCD at paper.yaml's settings (FreeU_V2 installed by the caller), as timed calls."""
    cfg = load_sample_config(PAPER, [f"frames={frames}", "face.detector=dlib", "stages=[t2v,face,tiled]"])
    stages = {name: STAGES[name](cfg) for name in cfg.stages}
    for stage in stages.values():
        stage.setup(magic)
    sample = Sample(index=0, prompt=sample_prompt, negative_prompt=cfg.negative_prompt, seed=0, gamma=cfg.gamma)
    calls = {"paper_t2v": lambda: stages["t2v"](magic, None, sample, torch.Generator().manual_seed(0))[0],
             "paper_face": lambda: stages["face"](magic, face_video, sample, torch.Generator().manual_seed(0))[0]}
    refined = calls["paper_face"]()
    calls["paper_tiled"] = lambda: stages["tiled"](magic, refined, sample, torch.Generator().manual_seed(0))[0]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp16", choices=["fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per side; medians are reported")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="magicme's regional compile of the UNet")
    parser.add_argument("--compile-mode", default=None, choices=["max-autotune", "max-autotune-no-cudagraphs",
                        "reduce-overhead"], help="torch.compile mode of --compile (default: inductor's default)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="T2V CFG (1 = one UNet batch per step)")
    parser.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS))
    parser.add_argument("--sdpa-backend", default="auto", choices=["auto", *SDPA_BACKENDS])
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense fp16/bf16 peak, for MFU")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper.yaml stages and vcd_over_floor")
    parser.add_argument("--fp8", action="store_true", help="the UNet's linear layers in float8 (needs --precision "
                        "bf16); prints the relative error of ε against bf16 on fixed inputs")
    parser.add_argument("--numerics", default="original", choices=["original", "diffusers"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: benchmark_gpu.py needs a CUDA GPU (full-size SD1.5 + motion module); on a CPU use "
                 "scripts/benchmark_sampling.py and scripts/benchmark_vcd.py with the tiny models")
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    magic = build(dtype, args.numerics, SCHEDULERS[args.scheduler])
    unet = magic.t2v.unet
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    if args.fp8:
        problem = fp8_problem(torch.device("cuda"), dtype)
        if problem:
            sys.exit(f"error: {problem}")
        print(f"fp8_eps_rel_error={fp8_error(unet, args.frames, dtype):.4f}")
    if args.compile:
        compile_unet(unet, mode=args.compile_mode)
    kernel = args.sdpa_backend
    if kernel == "auto":
        kernel = fastest_sdpa(attention_shape(512, 512, args.frames, args.guidance_scale > 1), torch.device("cuda"),
                              dtype)
    with attention_kernel(kernel):  # every call, stock diffusers included, runs with this attention kernel
        measure(args, magic, kernel)


def measure(args: argparse.Namespace, magic: MagicPipeline, kernel: str) -> None:
    """Time and count every call; print the table and the `name=value` lines."""
    stock = AnimateDiffPipeline(**magic.t2v.components)
    for pipe in (magic.t2v, magic.v2v, stock):
        pipe.set_progress_bar_config(disable=True)
    prompt, negative = "a photo of a man walking on the street", "blurry, low quality"
    common = dict(gamma=0.1, guidance_scale=args.guidance_scale, progress=False)

    def t2v():
        return magic.text_to_video(prompt, negative, torch.Generator().manual_seed(0), frames=args.frames, height=512,
                                   width=512, steps=args.steps, **common)

    def t2v_stock():
        stock(prompt=prompt, negative_prompt=negative, num_frames=args.frames, height=512, width=512,
              num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
              generator=torch.Generator().manual_seed(0),
              output_type="np")

    start = time.perf_counter()
    video = t2v()  # warm-up (and compilation)
    torch.cuda.synchronize()
    compile_seconds = time.perf_counter() - start
    t2v_stock()
    portrait = skdata.astronaut()[16:240, 112:336]  # a real face, so the face stage's detection is timed too
    face_video = np.repeat(resize_video(portrait[None].astype(np.float32) / 255.0, 512, 512), args.frames, 0)
    overrides = [f"steps={args.steps}", "guidance_scale=7.5", "face.detector=dlib"]
    face_stage, tiled_stage = (STAGES[name](load_sample_config(None, overrides)) for name in ("face", "tiled"))
    face_stage.setup(magic)
    tiled_stage.setup(magic)
    sample = Sample(index=0, prompt=prompt, negative_prompt=negative, seed=0, gamma=0.1)

    def face():  # the stage itself: detection, crop, masked denoise, paste
        face_stage(magic, face_video, sample, torch.Generator().manual_seed(0))

    def tiled():
        tiled_stage(magic, video, sample, torch.Generator().manual_seed(0))

    face()  # warm-up of the V2V path
    calls = {"t2v": t2v, "t2v_stock": t2v_stock, "face": face, "tiled": tiled}
    if not args.no_paper:
        install_freeu(magic.t2v.unet, **load_sample_config(PAPER, []).freeu)  # paper.yaml's FreeU_V2, last
        calls.update(paper_stages(magic, args.frames, face_video, prompt))
    flops = {name: count_flops(fn) for name, fn in calls.items()}  # also the paper stages' warm-up
    runs = {name: [] for name in calls}
    for _ in range(args.repeats):  # interleaved, so drift hits every side alike; medians compared
        for name, fn in calls.items():
            runs[name].append(timed(fn))
    results = {name: (float(np.median([r[0] for r in rs])), max(r[1] for r in rs)) for name, rs in runs.items()}
    t2v_s = results["t2v"][0]
    peak_flops = peak_tflops(torch.cuda.get_device_name(), args.peak_tflops)
    mfu = {name: flops[name] / seconds / (peak_flops * 1e12) if peak_flops else float("nan")
           for name, (seconds, _) in results.items()}
    print(f"{'stage':<12} {'seconds':>8} {'peak GiB':>9} {'TFLOP':>8} {'MFU':>6}")
    for name, (seconds, peak) in results.items():
        print(f"{name:<12} {seconds:>8.2f} {peak:>9.2f} {flops[name] / 1e12:>8.1f} {mfu[name]:>6.3f}")
    print(f"device={torch.cuda.get_device_name()}")
    print(f"setup=frames{args.frames}_512px_{args.steps}steps_cfg{args.guidance_scale:g}_{args.scheduler}_"
          f"{args.precision}_numerics-{args.numerics}_sdpa-{kernel}"
          f"{'_channels-last' if args.channels_last else ''}{'_compile' if args.compile else ''}"
          f"{'-' + args.compile_mode if args.compile and args.compile_mode else ''}{'_fp8' if args.fp8 else ''}")
    print(f"peak_tflops={peak_flops}")
    print(f"first_t2v_seconds={compile_seconds:.1f}")  # with --compile: compilation included
    print(f"t2v_seconds={t2v_s:.2f}")
    print(f"t2v_peak_gb={results['t2v'][1]:.2f}")
    print(f"t2v_stock_seconds={results['t2v_stock'][0]:.2f}")
    print(f"t2v_overhead_ratio={t2v_s / results['t2v_stock'][0]:.3f}")
    print(f"face_seconds={results['face'][0]:.2f}")
    print(f"tiled_seconds={results['tiled'][0]:.2f}")
    print(f"tiled_peak_gb={results['tiled'][1]:.2f}")
    print(f"face_over_t2v={results['face'][0] / t2v_s:.2f}")
    print(f"tiled_over_t2v={results['tiled'][0] / t2v_s:.2f}")
    print(f"vcd_over_t2v={(t2v_s + results['face'][0] + results['tiled'][0]) / t2v_s:.2f}")
    for name in results:
        print(f"{name}_mfu={mfu[name]:.3f}")
    if not args.no_paper:
        paper = {name: results[f"paper_{name}"][0] for name in ("t2v", "face", "tiled")}
        time_ratio = (paper["face"] + paper["tiled"]) / paper["t2v"]
        flop_ratio = (flops["paper_face"] + flops["paper_tiled"]) / flops["paper_t2v"]
        print(f"paper_vcd_seconds={sum(paper.values()):.2f}")
        print(f"vcd_over_floor={time_ratio / flop_ratio:.3f}")
    print(f"video_finite={bool(np.isfinite(video).all())}")


if __name__ == "__main__":
    main()
