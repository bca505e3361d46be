"""Learn a person's ID tokens from 5-10 photos; several people in one command.

    python train.py --config configs/train/example.yaml [key=value ...] [--resume latest|auto|PATH]
    python train.py --config configs/train/ann.yaml configs/train/bob.yaml       # one after another
    python train.py --config configs/train/team.yaml --resume auto               # identities: [ann, bob, ...]
    python train.py --config configs/tiny/train.yaml                 # tiny random-weight models: seconds
    accelerate launch train.py --config ...          # one identity: data-parallel; several: shared out

Writes <output_dir>/<name>-<timestamp>/ per identity with <name>.pt (use it as `embedding:<name> man` in sample.py
and ComfyUI; also copied to copy_to_embeddings_dir, by default the folder sample_config reads), checkpoints,
masks, validation videos, train.log and loss_curve.png, then prints a summary table and the sample.py command
that renders each identity.
See docs/training.md.
"""

import argparse
import sys

from magicme.cli import quiet_libraries

quiet_libraries()

from magicme.errors import ConfigError  # noqa: E402
from magicme.training.config import load_train_configs, validate_train_config  # noqa: E402
from magicme.training.identities import Job, process_state, summary_table, train_identities  # noqa: E402
from magicme.training.trainer import TrainingDiverged  # noqa: E402


def split_arguments(configs: list[str], overrides: list[str]) -> tuple[list[str], list[str]]:
    """`--config a.yaml b.yaml max_steps=2` gives argparse every word to --config: the key=value ones are
    overrides."""
    return [c for c in configs if "=" not in c], [c for c in configs if "=" in c] + overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, nargs="+", help="training config(s) (YAML), one or more")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every config, e.g. max_steps=200")
    parser.add_argument("--resume", default=None,
                        help="'latest', 'auto' (skip finished identities, continue partial ones, start the rest), "
                             "a run folder, or a state file <run>/checkpoints/state-step-N.pt")
    parser.add_argument("--compile", action="store_true", help="compile the UNet's blocks (compile=true): minutes "
                        "the first time, then cached next to the models; docs/speed.md")
    parser.add_argument("--force", action="store_true", help="replace an identity of the same name in "
                        "copy_to_embeddings_dir (without it, an existing different file there is an error)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.compile:
        args.overrides.append("compile=true")
    configs, overrides = split_arguments(args.config, args.overrides)
    try:
        if not configs:
            raise ConfigError("--config: give at least one YAML file")
        jobs = [Job(cfg, validate_train_config(cfg)) for cfg in load_train_configs(configs, overrides)]
        outcomes = train_identities(jobs, resume=args.resume, progress=not args.quiet, force=args.force)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 3
    if process_state().is_main_process:
        print(summary_table(outcomes))
        for outcome in outcomes:
            print(f"wrote {outcome.output}")
        for outcome in outcomes:
            if outcome.command:
                print(f"render {outcome.name}: {outcome.command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
