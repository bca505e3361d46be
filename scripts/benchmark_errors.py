"""How long a bad input takes to be refused, against how long the models take to load (docs/robustness.md).

    python scripts/benchmark_errors.py                       # on the tiny random-weight bundle (built in a temp dir)
    python scripts/benchmark_errors.py --config configs/sample/example.yaml   # on real models, where downloaded

Each case runs `sample.py` in a fresh process and times it from start to exit (the error line is its last act):
a bad config value (`steps=four`), a truncated ControlNet (the first entry of `control:` with its weights cut in
half) and a prompt of 700 words. The models' load is timed two ways in a fresh process: from start until the
pipeline has loaded (imports and checks included: what a user waits for), and the loading call alone. Medians of
`--repeats`.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOAD = """
import sys, time
from magicme.schema import load_sample_config, check_sample_config
from magicme.sampling import load_pipeline
cfg = load_sample_config(sys.argv[1])
samples, embeddings = check_sample_config(cfg)
begin = time.perf_counter()
load_pipeline(cfg, embeddings, cfg.device)
end = time.perf_counter()
print(f"{end - begin}")
"""


def timed(args: list[str]) -> tuple[float, str, str]:
    """Seconds from starting a Python process until it exited, its last stderr line and its stdout."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = done.stderr.strip().splitlines()
    return seconds, lines[-1] if lines else "", done.stdout.strip()


def tiny_config(folder: Path) -> Path:
    from magicme.tiny.bundle import build_tiny_bundle

    bundle = build_tiny_bundle(folder / "tiny")
    cfg = {"model": {"base": str(bundle["sd15"]), "motion_module": str(bundle["motion_v2"]),
                     "embeddings_dir": str(bundle["embedding"].parent)},
           "prompts": ["a photo of embedding:tinyperson man"], "steps": 2, "frames": 8, "width": 64, "height": 64,
           "control": [{"model": str(bundle["controlnet"]), "video": str(bundle["control_clip"])}],
           "output_dir": str(folder / "out")}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def truncated_controlnet(config: Path, folder: Path) -> str:
    """A copy of the config's first ControlNet with its weights cut in half."""
    net = Path(yaml.safe_load(config.read_text())["control"][0]["model"])
    copy = Path(shutil.copytree(net, folder / "controlnet-truncated"))
    for weights in copy.glob("*.safetensors"):
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    return str(copy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a sampling config with one `control:` entry; default: the tiny bundle")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = Path(args.config) if args.config else tiny_config(folder)
        control = yaml.safe_load(config.read_text())["control"][0]
        cases = {
            "bad config (steps=four)": ["steps=four"],
            "truncated ControlNet": [f"control=[{{model: {truncated_controlnet(config, folder)}, "
                                     f"video: {control['video']}}}]"],
            "700-word prompt": [f"prompts=['{' '.join(['word'] * 700)}']"],
        }
        results = {}
        for name, overrides in cases.items():
            runs = [timed(["sample.py", "--config", str(config), "--quiet", *overrides]) for _ in range(args.repeats)]
            results[name] = {"seconds": round(statistics.median(r[0] for r in runs), 2), "line": runs[0][1][:110]}
        loads = [timed(["-c", LOAD, str(config)]) for _ in range(args.repeats)]
        results["models load (the loading call)"] = {"seconds": round(statistics.median(float(r[2]) for r in loads), 2)}
        results["start until the models have loaded"] = {"seconds": round(statistics.median(r[0] for r in loads), 2)}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
