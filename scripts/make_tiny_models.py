"""Build the tiny random-weight model bundle (real file formats, seconds on a CPU).

    python scripts/make_tiny_models.py --out models/tiny

configs/tiny/*.yaml use it: the SD1.5 and SD-XL models, motion modules, LoRAs, ControlNets, SparseCtrl, CLIPSeg, two
identities (tinyperson, tinywoman), evaluation models (eval/clip, eval/dino) and a few synthetic photos per identity
(dataset/<identity>/). Videos made with it are noise: it exists to test every loading path offline.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.tiny.bundle import build_tiny_bundle  # noqa: E402 - after making the repo importable
from magicme.tiny.extras import save_tiny_extras  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/tiny", help="output folder (default: models/tiny)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    paths = build_tiny_bundle(args.out, seed=args.seed)
    paths.update(save_tiny_extras(args.out, seed=args.seed))
    for name, path in paths.items():
        print(f"{name:>14}: {path}")
    print(f"built in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
