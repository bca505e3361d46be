"""Score sample runs against an identity's photos: CLIP-I, CLIP-T, DINO, temporal consistency, face identity.

    python scripts/evaluate.py --samples outputs/run-a [outputs/run-b ...] --references dataset/<name>
    python scripts/evaluate.py --samples outputs/grid --references dataset      # a grid: dataset/<identity>/ each
    python scripts/evaluate.py --config configs/tiny/eval.yaml --samples outputs/<run> --references models/tiny/dataset
        [--out DIR] [--config configs/eval/default.yaml] [--device auto] [--clip MODEL] [--dino MODEL]
        [--frames-per-video K] [--no-faces] [--no-cache] [--arcface PACK] [--curricularface FILE]

Writes metrics.json, metrics.csv and report.html into --out (default: <first run>/eval/). Each video's scores are
kept in <run>/eval_cache.jsonl: evaluating the run again scores only videos it has not scored with these models and
settings. Models are local folders
(default models/eval/clip-vit-large-patch14 and models/eval/dino-vits16) or Hub ids you name explicitly.
See docs/evaluation.md.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

from magicme.errors import ConfigError  # noqa: E402
from magicme.evaluation.evaluate import evaluate, load_settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", nargs="+", required=True, help="sample run folder(s) holding samples.jsonl")
    parser.add_argument("--references", required=True,
                        help="the identity's photo folder (dataset/<name>), or a folder of per-identity folders "
                             "(dataset/): each identity of a grid is scored against its own photos")
    parser.add_argument("--out", help="output folder (default: <first samples folder>/eval)")
    parser.add_argument("--config", help="evaluation settings YAML (configs/eval/default.yaml lists every key)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--clip", help="CLIP model folder or Hub id")
    parser.add_argument("--dino", help="DINO model folder or Hub id")
    parser.add_argument("--arcface", help="insightface antelopev2 / buffalo_l folder: FaceSim-Arc, drift, copy-paste")
    parser.add_argument("--curricularface", help="CurricularFace IR-101 state dict: FaceSim-Cur")
    parser.add_argument("--frames-per-video", type=int, help="evenly spaced frames scored per video (0 = all)")
    parser.add_argument("--no-faces", action="store_true", help="skip the dlib face identity metric")
    parser.add_argument("--no-cache", action="store_true", help="score every video again (and do not record them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    overrides = {"device": args.device, "clip": args.clip, "dino": args.dino,
                 "frames_per_video": args.frames_per_video, "faces": False if args.no_faces else None,
                 "arcface": args.arcface, "curricularface": args.curricularface,
                 "cache": False if args.no_cache else None}
    try:
        out = evaluate(args.samples, args.references, args.out, load_settings(args.config, overrides),
                       progress=not args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = json.loads((out / "metrics.json").read_text())["cache"]
    print(f"scored {counts['computed']} videos, {counts['cached']} from the runs' eval_cache.jsonl")
    print(f"wrote {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
