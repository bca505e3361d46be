"""The paper's protocol in one command: train → sample the prompt × seed grid per identity → evaluate → one report.

    python scripts/paper_protocol.py --identities altman scarlett --class-word scarlett=woman --out outputs/paper
    python scripts/paper_protocol.py --identities altman --embeddings models/embeddings ...   # published ones
    python scripts/paper_protocol.py ... --dry-run      # print the plan and its GPU-hours; run nothing
    python scripts/paper_protocol.py ... --launch "accelerate launch --num_processes 8"   # train/sample on 8 GPUs

Run it from the repository root. Photos (training, and the references of the evaluation) are <dataset>/<name>/.
The prompts and seeds come from --prompts (configs/eval/prompts_man.yaml: 25 × 4; `{id}` becomes embedding:NAME and the identity's own class word),
the sampling settings and stages from --sample-config (configs/sample/paper.yaml). Writes <out>/train.yaml,
<out>/sample-<name>.yaml, <out>/train/, <out>/embeddings/, <out>/samples/<name>/, <out>/eval/<name>/ and
<out>/report.md + report.csv. Every step resumes, so running the same command again continues. See
docs/evaluation.md.
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.errors import ConfigError  # noqa: E402
from magicme.evaluation.paper import build_plan, load_costs, parse_class_words, write_configs, write_report  # noqa: E402,E501


def executable(command: list[str]) -> list[str]:
    """A plan command as run from here: `python` is this interpreter."""
    return [sys.executable, *command[1:]] if command[0] == "python" else command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", nargs="+", required=True, help="identity names (photos in <dataset>/<name>)")
    parser.add_argument("--out", required=True, help="the protocol's folder")
    parser.add_argument("--dataset", default="dataset", help="folder of <name>/ photo folders")
    parser.add_argument("--class-word", nargs="*", default=[], metavar="NAME=WORD",
                        help="class words (training default: the training config's class_word; sampling: the "
                             "embedding file's)")
    parser.add_argument("--train-config", default="configs/train/team.yaml", help="training settings (its "
                        "identities and photo folder are replaced)")
    parser.add_argument("--embeddings", help="published embeddings <dir>/<name>.pt: no training")
    parser.add_argument("--sample-config", default="configs/sample/paper.yaml", help="sampling settings and stages")
    parser.add_argument("--prompts", default="configs/eval/prompts_man.yaml", help="protocol prompts and seeds")
    parser.add_argument("--stages", help="comma-separated stages instead of the sampling config's, e.g. "
                                         "t2v,face,tiled")
    parser.add_argument("--eval-config", help="evaluation settings (configs/eval/default.yaml)")
    parser.add_argument("--launch", default="python", help="how train.py and sample.py start, e.g. "
                                                           "'accelerate launch --num_processes 8'")
    parser.add_argument("--costs", default="configs/eval/gpu_costs.yaml", help="measured GPU seconds per stage")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its GPU-hours; run nothing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        plan = build_plan(
            args.identities, out, Path(args.dataset), Path(args.prompts), Path(args.sample_config),
            load_costs(args.costs), train_base=Path(args.train_config),
            embeddings=Path(args.embeddings) if args.embeddings else None,
            class_words=parse_class_words(args.class_word, args.identities),
            stages=args.stages.split(",") if args.stages else None,
            eval_config=Path(args.eval_config) if args.eval_config else None, launch=shlex.split(args.launch))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(plan.describe())
    if args.dry_run:
        return 0
    write_configs(plan)
    for step in plan.steps:
        print(f"== {step.what}: {shlex.join(step.command)}", flush=True)
        code = subprocess.run(executable(step.command)).returncode
        if code != 0:
            print(f"error: {step.what} failed (exit {code}); fix it and run the same command again to continue",
                  file=sys.stderr)
            return code
    try:
        report = write_report(out, plan.identities)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
