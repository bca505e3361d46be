"""Write the sampling config of the evaluation protocol for one identity.

    python scripts/make_eval_config.py --protocol configs/eval/prompts_man.yaml --name altman \
        --base configs/sample/example.yaml --out configs/eval/altman.yaml

The base config gives the model, steps, γ, stages...; the protocol gives the 25 prompts and 4 seeds, and the class
word: each prompt's `{id}` becomes `embedding:NAME <class_word>`.
Then: python sample.py --config configs/eval/altman.yaml [gamma=0 output_dir=...] and scripts/evaluate.py.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from magicme.errors import ConfigError  # noqa: E402
from magicme.evaluation.protocol import protocol_config  # noqa: E402
from magicme.rundir import check_output_dir  # noqa: E402
from magicme.video_io import atomic_path  # noqa: E402


def check_out_file(out: str) -> Path:
    """--out names a file to write, in a folder we can write in; checked before anything is read."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder; give the path of the YAML file to write, e.g. {path}/NAME.yaml")
    check_output_dir(path.parent, "--out")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", required=True, help="configs/eval/prompts_man.yaml or prompts_woman.yaml")
    parser.add_argument("--name", required=True, help="the identity's embedding name (embedding:NAME)")
    parser.add_argument("--base", default="configs/sample/example.yaml", help="sampling config to start from")
    parser.add_argument("--out", required=True, help="where to write the sampling config")
    args = parser.parse_args(argv)
    try:
        out = check_out_file(args.out)
        config = protocol_config(args.base, args.protocol, args.name)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with atomic_path(out) as tmp:
        OmegaConf.save(config, tmp)
    print(f"wrote {out}: {len(config.prompts)} prompts x {len(config.seeds)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
