"""A golden manifest of what the tiny sampling configs render: a refactor that must keep behaviour keeps it.

    python scripts/golden.py --out golden.json                 # record (builds models/tiny if missing)
    python scripts/golden.py --check golden.json               # render again and compare; exit 1 on a difference

For every sampling config in configs/tiny/ (training and evaluation configs are skipped: they write no frames), the
config is rendered through sample.py's own code path with `save_frames=true` into a fresh run folder, and the
manifest records the sha256 of every PNG frame and of `samples.jsonl` with the keys that vary from run to run
(timings) removed. Every run is on CPU with one thread, so the hashes are reproducible on one machine and library
set; they are not meant to agree across machines.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARYING_KEYS = {"seconds"}  # samples.jsonl keys that differ between two identical runs


def sampling_configs(folder: Path) -> list[Path]:
    """The tiny configs sample.py reads: a top-level `prompts:` key and no `images_dir` (training's)."""
    import yaml

    found = []
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "prompts" in data and "images_dir" not in data:
            found.append(path)
    return found


def stable_jsonl(path: Path) -> str:
    """samples.jsonl without its timings, as one canonical string."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.dumps([{k: v for k, v in row.items() if k not in VARYING_KEYS} for row in rows], sort_keys=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render(config: Path, run_dir: Path) -> dict[str, str]:
    """Render one config into run_dir; {relative PNG path or 'samples.jsonl': sha256}."""
    env_cmd = [sys.executable, str(ROOT / "sample.py"), "--config", str(config), "--run-dir", str(run_dir),
               "--quiet", "save_frames=true", "device=cpu"]
    result = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True,
                            env={**_env(), "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{config.name}: sample.py failed:\n{result.stderr[-2000:]}")
    hashes = {str(p.relative_to(run_dir)): sha256(p.read_bytes()) for p in sorted(run_dir.rglob("*.png"))}
    hashes["samples.jsonl"] = sha256(stable_jsonl(run_dir / "samples.jsonl").encode())
    return hashes


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def manifest(configs: list[Path]) -> dict[str, dict[str, str]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            print(f"rendering {config.name}", file=sys.stderr)
            out[config.name] = render(config, Path(tmp) / config.stem)
    return out


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable lines for every config and file whose hash changed, appeared or disappeared."""
    lines = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            lines.append(f"{name}: {'new config' if a is None else 'config gone'}")
            continue
        for file in sorted(a.keys() | b.keys()):
            if a.get(file) != b.get(file):
                lines.append(f"{name}: {file} differs")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write the manifest here")
    group.add_argument("--check", type=Path, help="compare with this manifest")
    parser.add_argument("--configs", type=Path, default=ROOT / "configs" / "tiny")
    args = parser.parse_args(argv)
    if not (ROOT / "models" / "tiny").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_models.py"), "--out",
                        str(ROOT / "models" / "tiny")], check=True, env=_env())
    new = manifest(sampling_configs(args.configs))
    if args.out:
        args.out.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.out}: {sum(len(v) for v in new.values())} hashes over {len(new)} configs")
        return 0
    diff = differences(json.loads(args.check.read_text()), new)
    print("\n".join(diff) if diff else f"identical: {len(new)} configs")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
