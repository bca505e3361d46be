"""Grid sampling at scale on the tiny bundle (CPU): 2 processes vs 1, resume after a kill, manifest/hash overhead.

    python scripts/benchmark_scale.py [--prompts 4] [--seeds 8] [--frames 8] [--size 64] [--steps 2]

- Scaling: the grid (prompts × seeds, T2V) rendered by `python sample.py --run-dir` (1 process) and by
  `accelerate launch --multi_gpu --num_processes 2` (on a machine without GPUs: 2 CPU processes over gloo), one
  torch thread per process. `scaling_wall` = t1 / (2 · t2) over the whole command; `scaling_render` does the same
  after subtracting each command's fixed cost (imports, model loading, merging), measured as the same command on the
  finished folder (nothing left to render).
  Control: two independent 1-process runs on half the prompts each, started together (the old way);
  `scaling_hand_split` is what the machine allows two processes, `launch_vs_hand_split` = t_hand / t2 (1 = the
  launch costs nothing over splitting by hand).
- Resume: a 1-process run is killed (SIGKILL) once half the samples are in its manifest, then run again;
  `resume_rerendered` counts samples finished before the kill that the resume rendered again (goal: 0),
  `resume_rendered` what it rendered (= `resume_left_at_kill`, the samples unfinished at the kill, the one in flight
  included), and `resume_identical` whether every file equals the uninterrupted run's (and the 2-process run's).
- Overhead: naming every sample (file fingerprints + hashes), appending its manifest record and the merge, per
  sample, as a fraction of a tiny sample's time (render and files: (t1 − fixed1) / samples).
  `sample_seconds` / `sample_seconds_2_processes`: a sample's stage time alone, in the 1- and 2-process runs (equal
  when the cores are free; their ratio shows contention).
- Projection: the 2,400-video protocol grid (24 identities × 25 prompts × 4 seeds, T2V + Face + Tiled VCD) on
  `--gpus` GPUs at ideal scaling, from per-video seconds given on the command line (defaults: the H100 figures of
  README/docs/vcd.md).
Printed last as `name=value` lines. The machine may be shared: rerun when figures look contended.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

from magicme import manifest  # noqa: E402
from magicme.naming import file_fingerprints, name_samples  # noqa: E402
from magicme.schema import check_sample_config, load_sample_config  # noqa: E402
from magicme.tiny.bundle import build_tiny_bundle  # noqa: E402

WORDS = ["walking", "running", "smiling", "dancing", "reading", "cooking", "singing", "jumping"]


def write_config(folder: Path, bundle: dict, args, prompts: range | None = None, name: str = "grid") -> Path:
    cfg = {"model": {"base": str(bundle["sd15"]), "base_config": None, "vae": None,
                     "motion_module": str(bundle["motion_v2"]), "embeddings_dir": str(bundle["embedding"].parent)},
           "prompts": [f"a photo of embedding:tinyperson man {WORDS[i % len(WORDS)]} {i}"
                       for i in (prompts or range(args.prompts))],
           "seeds": list(range(args.seeds)), "steps": args.steps, "frames": args.frames, "width": args.size,
           "height": args.size, "device": "cpu", "output_dir": str(folder / "out")}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def sample_command(config: Path, run_dir: Path, processes: int) -> list[str]:
    script = ["sample.py", "--config", str(config), "--run-dir", str(run_dir), "--quiet"]
    if processes == 1:
        return [sys.executable, *script]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
            "--dynamo_backend", "no", *script]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def timed_together(commands: list[list[str]]) -> float:
    """Wall time of independent commands started at once (the old way: one process per device, a share each)."""
    start = time.perf_counter()
    processes = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for c in commands]
    if any(p.wait() != 0 for p in processes):
        raise RuntimeError("a hand-split run failed")
    return time.perf_counter() - start


def rendered_hashes(run_dir: Path) -> list[str]:
    return [r["hash"] for r in manifest.read_records(run_dir)]


def kill_at_half(config: Path, run_dir: Path, samples: int) -> set[str]:
    """Start a 1-process run, SIGKILL it once half the samples are in its manifest; the hashes finished then."""
    process = subprocess.Popen(sample_command(config, run_dir, 1), cwd=REPO, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ((run_dir / "manifest").is_dir() and len(rendered_hashes(run_dir)) >= samples // 2):
        if process.poll() is not None:
            raise RuntimeError("the run ended before it could be killed; use a bigger grid")
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return set(manifest.finished_videos(run_dir, manifest.read_records(run_dir)))


def same_files(a: Path, b: Path) -> bool:
    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
                if p.is_file() and p.name != manifest.SAMPLES_FILE and "manifest" not in p.parts}
    return files(a) == files(b)


def overhead(config: Path, run_dir: Path) -> float:
    """Seconds per sample of naming, recording and merging, measured in this process."""
    cfg = load_sample_config(config)
    samples, embeddings = check_sample_config(cfg)
    records = {r["hash"]: r for r in manifest.read_records(run_dir)}
    start = time.perf_counter()
    named = name_samples(cfg, samples, file_fingerprints(cfg, embeddings))
    with tempfile.TemporaryDirectory() as tmp:
        shard = manifest.ShardWriter(Path(tmp), 0)
        for sample in named:
            for _, h in sample.hashes:
                shard.append(records[h])
        shard.close()
        for name in {f for r in records.values() for f in r["files"].values()}:
            (Path(tmp) / name).touch()
        manifest.merge(Path(tmp), named)
    return (time.perf_counter() - start) / len(named)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--t2v-seconds", type=float, default=4.54,
                        help="per-video T2V seconds on the target GPU (H100, 16 × 512², 25 steps, fp16: README)")
    parser.add_argument("--vcd-factor", type=float, default=3.55,
                        help="T2V + Face + Tiled VCD cost relative to T2V (H100: docs/vcd.md)")
    parser.add_argument("--videos", type=int, default=2400)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    samples = args.prompts * args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = build_tiny_bundle(tmp / "tiny")
        config = write_config(tmp, bundle, args)
        half = args.prompts // 2
        halves = [write_config(tmp, bundle, args, range(0, half), "first"),
                  write_config(tmp, bundle, args, range(half, args.prompts), "second")]
        one, two, killed = tmp / "one", tmp / "two", tmp / "killed"
        t1 = timed(sample_command(config, one, 1))
        fixed1 = timed(sample_command(config, one, 1))
        t2 = timed(sample_command(config, two, 2))
        fixed2 = timed(sample_command(config, two, 2))
        t_hand = timed_together([sample_command(c, tmp / c.stem, 1) for c in halves])
        per_sample = sum(r["seconds"] for r in manifest.read_records(one)) / samples
        per_sample_2 = sum(r["seconds"] for r in manifest.read_records(two)) / samples
        before = kill_at_half(config, killed, samples)
        done_before = len(before)
        t_resume = timed(sample_command(config, killed, 1))
        again = rendered_hashes(killed)[done_before:]
        rerendered = len([h for h in again if h in before])
        identical = same_files(one, killed) and same_files(one, two)
        per_sample_overhead = overhead(config, one)
    scaling_wall = t1 / (2 * t2)
    scaling_render = (t1 - fixed1) / (2 * (t2 - fixed2))
    gpu_video = args.t2v_seconds * args.vcd_factor
    hours_1 = args.videos * gpu_video / 3600
    figures = {
        "samples": samples, "settings": f"{args.frames}x{args.size}^2x{args.steps}steps, 1 thread per process",
        "t1_seconds": round(t1, 2), "t2_seconds": round(t2, 2), "fixed1_seconds": round(fixed1, 2),
        "fixed2_seconds": round(fixed2, 2), "scaling_wall": round(scaling_wall, 3),
        "scaling_render": round(scaling_render, 3), "hand_split_seconds": round(t_hand, 2),
        "scaling_hand_split": round(t1 / (2 * t_hand), 3), "launch_vs_hand_split": round(t_hand / t2, 3), "sample_seconds": round(per_sample, 3),
        "sample_seconds_2_processes": round(per_sample_2, 3), "sample_seconds_with_files": round((t1 - fixed1) / samples, 3),
        "resume_killed_after": done_before, "resume_seconds": round(t_resume, 2),
        "resume_left_at_kill": samples - done_before, "resume_rendered": len(again), "resume_rerendered": rerendered,
        "resume_identical": identical,
        "overhead_ms_per_sample": round(per_sample_overhead * 1000, 2),
        "overhead_fraction": round(per_sample_overhead / ((t1 - fixed1) / samples), 4),
        "projection_gpu_video_seconds": round(gpu_video, 2), "projection_hours_1_gpu": round(hours_1, 2),
        "projection_hours_ideal": round(hours_1 / args.gpus, 2),
    }
    for name, value in figures.items():
        print(f"{name}={json.dumps(value) if not isinstance(value, str) else value}")


if __name__ == "__main__":
    main()
