"""Model doctor: check that every model file a sampling config needs is present, complete (a truncated download
fails), in the right format and version, and fits the rest (text width, motion-module channels, single file vs
base_config) — from headers (magicme/inspector.py), no GPU.

    python scripts/check_models.py                                    # the default paths under models/
    python scripts/check_models.py --config configs/sample/example.yaml [key=value ...]

Prints a table; exit status 0 when all is well, 1 when a check fails, 2 for a bad config.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

from magicme.doctor import check_sample_config  # noqa: E402
from magicme.errors import ConfigError  # noqa: E402
from magicme.inspector import FAIL  # noqa: E402
from magicme.schema import load_sample_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="sampling config (YAML); default: the schema's defaults")
    parser.add_argument("--models-dir", default="models", help="where optional extras (CLIPSeg, eval) live")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.base=models/base/x.safetensors")
    args = parser.parse_args(argv)
    try:
        report = check_sample_config(load_sample_config(args.config, args.overrides), args.models_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    failed = [c for c in report.checks if c.status == FAIL]
    if failed:
        first = failed[0]
        where = "" if first.path == "-" else f"{first.path}: "
        print(f"\n{len(failed)} problem(s); first: {first.item}: {where}{first.detail}", file=sys.stderr)
        return 1
    print("\nall model files present and consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
