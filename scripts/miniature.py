"""The miniature world (docs/miniature.md): pretrain small text-to-video models on procedurally rendered scenes,
learn an unseen object's ID tokens with train.py's code, and measure identity learning, the masked loss and the 3D
noise prior against a classifier trained on the world.

    python scripts/miniature.py                      # models/miniature/ (cached) + docs/miniature.md (+ .png)
    python scripts/miniature.py --only identity      # one experiment (identity | mask | gamma | denoising)
    python scripts/miniature.py --ci --doc /tmp/ci.md # the test's reduced world and plan (models/miniature_ci/)

Pretraining is resumable (kill it and run the same command) and reused once complete: models/miniature/bundle.json
records the world and budget it was built for. On a shared CPU set OMP_NUM_THREADS=1.
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="where the pretrained models are cached (default "
                        "models/miniature, with --ci models/miniature_ci)")
    parser.add_argument("--doc", default="docs/miniature.md", help="the report to write")
    parser.add_argument("--only", nargs="+", choices=["identity", "mask", "gamma", "denoising"],
                        help="run only these experiments")
    parser.add_argument("--ci", action="store_true", help="the CI test's reduced world and plan (minutes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from dataclasses import replace

    import torch

    from magicme.miniature.ablations import CI_PLAN, FULL_PLAN, run
    from magicme.miniature.pretrain import CI, FULL, pretrain
    from magicme.miniature.report import write_report
    from magicme.miniature.world import CI_WORLD, World

    if "OMP_NUM_THREADS" not in __import__("os").environ:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    budget, plan = (CI, CI_PLAN) if args.ci else (FULL, FULL_PLAN)
    if args.only:
        plan = replace(plan, experiments=tuple(args.only))
    out = Path(args.out or ("models/miniature_ci" if args.ci else "models/miniature"))
    world = CI_WORLD if args.ci else World()
    bundle = pretrain(out, world, budget)
    command = ("python scripts/miniature.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()

    def report(results):
        write_report(Path(args.doc), results, bundle, time.perf_counter() - start, command)

    with tempfile.TemporaryDirectory(prefix="miniature-runs-") as runs:
        run(out, world, plan, Path(runs), after_each=report)
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
