"""Learn a person's ID tokens from 5-10 photos.

    python train.py --config configs/train/example.yaml [key=value ...] [--resume latest|PATH]
    accelerate launch train.py --config ...          # several GPUs, unchanged

Writes <output_dir>/<name>-<timestamp>/ with <name>.pt (use it as `embedding:<name> man` in sample.py and
ComfyUI), checkpoints, masks, validation videos, train.log and loss_curve.png. See docs/training.md.
"""

import argparse
import sys

from magicme.cli import quiet_libraries

quiet_libraries()

from magicme.errors import ConfigError  # noqa: E402
from magicme.training.config import load_train_config, validate_train_config  # noqa: E402
from magicme.training.trainer import TrainingDiverged, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training config (YAML)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=200 lr=5e-4")
    parser.add_argument("--resume", default=None,
                        help="'latest', a run folder, or a state file <run>/checkpoints/state-step-N.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
        photos = validate_train_config(cfg)
        run_dir = train(cfg, photos, resume=args.resume, progress=not args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 3
    print(f"wrote {run_dir / (cfg.name + '.pt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
