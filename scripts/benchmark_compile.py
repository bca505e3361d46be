"""What `--compile` costs and gives, through `sample.py` itself: the same tiny config rendered three times, each in a
fresh process: plain, compiled with an empty inductor cache (cold), compiled again from that cache (warm).

    python scripts/benchmark_compile.py [--samples 4] [--frames 16] [--size 64] [--steps 10] [--threads 1]

Prints `name=value` lines: each run's wall seconds (start-up, loading and compilation included) and the median
seconds of its samples after the first (the steady state; the first sample carries the compilation).
On a GPU the same run measures the real thing; the full-size figures come from `benchmark_gpu.py --compile`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from magicme.tiny.bundle import build_tiny_bundle  # noqa: E402


def render(config: Path, run_dir: Path, env: dict, compile_: bool) -> tuple[float, float]:
    """Wall seconds of one `sample.py` process and the median seconds of its samples after the first."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "sample.py"), "--config", str(config), "--run-dir", str(run_dir),
                    "--quiet", *(["--compile"] if compile_ else [])], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return wall, statistics.median(r["seconds"] for r in records[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of each sample.py process")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    bundle = build_tiny_bundle(work / "tiny")
    config = work / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base": str(bundle["sd15"]), "motion_module": str(bundle["motion_v2"]),
                  "embeddings_dir": str(bundle["embedding"].parent), "scheduler": "ddim"},
        "prompts": ["a photo of <tinyperson> man walking"], "seeds": list(range(args.samples)),
        "steps": args.steps, "frames": args.frames, "width": args.size, "height": args.size,
        "device": "cpu", "formats": ["gif"], "output_dir": str(work / "out")}))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache")}
    results = {name: render(config, work / name, env, name != "plain") for name in ("plain", "cold", "warm")}
    print(f"setup=cpu_threads{args.threads}_tiny_{args.samples}samples_{args.frames}x{args.size}px_{args.steps}steps")
    for name, (wall, per_sample) in results.items():
        print(f"{name}_wall_seconds={wall:.1f}")
        print(f"{name}_sample_seconds={per_sample:.3f}")
    print(f"compile_cold_extra_seconds={results['cold'][0] - results['plain'][0]:.1f}")
    print(f"compile_warm_extra_seconds={results['warm'][0] - results['plain'][0]:.1f}")
    print(f"compiled_over_plain_per_sample={results['warm'][1] / results['plain'][1]:.3f}")


if __name__ == "__main__":
    main()
