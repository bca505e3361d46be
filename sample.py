"""Render identity-specific videos from a YAML config.

    python sample.py --config configs/sample/example.yaml [key=value ...]
    python sample.py --config grid.yaml --run-dir outputs/grid        # create, or continue after a kill
    accelerate launch --num_processes 8 sample.py --config grid.yaml --run-dir outputs/grid   # shared by 8 GPUs

Overrides use OmegaConf dot-list syntax, e.g. `steps=4 gamma=0.2 model.scheduler.name=euler output_dir=outputs/try`.
Every key is described in configs/sample/example.yaml and the README; grids, resuming and several GPUs in
docs/scale.md.
"""

import argparse
import os
import sys

from magicme.cli import quiet_libraries
from magicme.errors import ConfigError
from magicme.inspector import inspect_files
from magicme.schema import check_settings, load_sample_config, model_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sampling config (YAML)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=4 seeds=[1,2]")
    parser.add_argument("--run-dir", help="render into this folder: created if missing, continued if present "
                        "(finished samples are skipped); default: a new <output_dir>/<config>-<time>/")
    parser.add_argument("--force-new", action="store_true", help="with --run-dir: move an existing run there aside "
                        "to <run-dir>.old-<time> and start afresh (nothing is deleted)")
    parser.add_argument("--compile", action="store_true", help="compile the UNet's blocks (compile=true): minutes "
                        "the first time at new shapes, then cached next to the models; docs/speed.md")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.compile:
        args.overrides.append("compile=true")
    quiet_libraries()  # before diffusers/transformers are imported, so their verbosity settings take effect
    try:
        cfg = load_sample_config(args.config, args.overrides)
        check_settings(cfg)  # typos and ranges, before the model libraries take seconds to import
        inspect_files(model_files(cfg)).raise_first()  # ControlNets, SparseCtrl, …: headers, before torch is imported
        from magicme.sampling import run_sampling

        run_dir = run_sampling(args.config, cfg=cfg, progress=not args.quiet, run_dir=args.run_dir,
                               force_new=args.force_new)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
