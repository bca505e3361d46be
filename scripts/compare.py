"""Compare identity methods in one command: train each → sample one prompt × seed grid → evaluate → one table.

    python scripts/compare.py --identities altman scarlett --class-word scarlett=woman \
        --methods tokens,tokens-unmasked --out outputs/compare
    python scripts/compare.py ... --preset paper      # the paper's protocol: 25 prompts × 4 seeds per identity
    python scripts/compare.py ... --dry-run           # the plan and its estimated GPU-hours; run nothing

Methods: tokens (masked extended textual inversion, the paper), tokens-unmasked (loss over the whole image).
lora, tokens+lora and ip-adapter are refused with what is missing. Every method is a protocol plan
(scripts/paper_protocol.py) under <out>/<method>/, so running the same command again continues where it stopped.
Writes <out>/comparison.csv, comparison.md, comparison.html (mean ± 95 % CI per method and stage) and
<out>/gpu_hours.json. Evaluation settings (--eval-config) choose the metrics: FaceSim-Arc/Cur, motion, drift and
copy-paste need the models of docs/evaluation.md.
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.errors import ConfigError  # noqa: E402
from magicme.evaluation.compare import (  # noqa: E402
    build_comparison, check_paper_protocol, collect, comparison_rows, parse_methods, write_tables,
)
from magicme.evaluation.paper import load_costs, parse_class_words, write_configs  # noqa: E402
from magicme.video_io import atomic_path  # noqa: E402

PRESETS = {"paper": {"prompts": "configs/eval/prompts_man.yaml", "sample_config": "configs/sample/paper.yaml"}}


def executable(command: list[str]) -> list[str]:
    return [sys.executable, *command[1:]] if command[0] == "python" else command


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def run_steps(plans: dict, ledger_path: Path) -> int:
    """Run every plan's commands; add the wall-clock seconds of training and sampling to the ledger."""
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {"seconds": {}}
    for method, plan in plans.items():
        write_configs(plan)
        for step in plan.steps:
            print(f"== {method}: {step.what}: {shlex.join(step.command)}", flush=True)
            start = time.monotonic()
            code = subprocess.run(executable(step.command)).returncode
            if step.gpu_seconds or step.what.startswith(("train", "sample")):
                key = f"{method}: {step.what}"
                ledger["seconds"][key] = ledger["seconds"].get(key, 0.0) + time.monotonic() - start
                with atomic_path(ledger_path) as tmp:
                    tmp.write_text(json.dumps(ledger, indent=1))
            if code != 0:
                print(f"error: {method}: {step.what} failed (exit {code}); fix it and run the same command again "
                      f"to continue", file=sys.stderr)
                return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", nargs="+", required=True, help="identity names (photos in <dataset>/<name>)")
    parser.add_argument("--methods", default="tokens,tokens-unmasked", help="comma-separated methods")
    parser.add_argument("--out", required=True, help="the comparison's folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="paper: 25 prompts × 4 seeds, configs/sample/"
                                                                   "paper.yaml")
    parser.add_argument("--dataset", default="dataset", help="folder of <name>/ photo folders")
    parser.add_argument("--class-word", nargs="*", default=[], metavar="NAME=WORD")
    parser.add_argument("--train-config", default="configs/train/team.yaml")
    parser.add_argument("--sample-config", default="configs/sample/paper.yaml")
    parser.add_argument("--prompts", default="configs/eval/prompts_man.yaml")
    parser.add_argument("--stages", help="comma-separated stages instead of the sampling config's")
    parser.add_argument("--eval-config", help="evaluation settings (configs/eval/default.yaml)")
    parser.add_argument("--launch", default="python", help="how train.py and sample.py start")
    parser.add_argument("--costs", default="configs/eval/gpu_costs.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the plans and their GPU-hours; run nothing")
    args = parser.parse_args(argv)
    preset = PRESETS.get(args.preset, {})
    out = Path(args.out)
    try:
        methods = parse_methods(args.methods)
        costs = load_costs(args.costs)
        plans = build_comparison(
            methods, out, identities=args.identities, dataset=Path(args.dataset),
            protocol=Path(preset.get("prompts", args.prompts)),
            sample_base=Path(preset.get("sample_config", args.sample_config)), costs=costs,
            train_base=Path(args.train_config), class_words=parse_class_words(args.class_word, args.identities),
            stages=args.stages.split(",") if args.stages else None,
            eval_config=Path(args.eval_config) if args.eval_config else None, launch=shlex.split(args.launch))
        if args.preset == "paper":
            for plan in plans.values():
                check_paper_protocol(plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    estimated = sum(p.gpu_hours for p in plans.values())
    for method, plan in plans.items():
        print(f"# {method}\n{plan.describe()}")
    print(f"estimated GPU time, all methods: {estimated:.2f} GPU-hours on {costs.device}")
    if args.dry_run:
        return 0
    ledger = out / "gpu_hours.json"
    code = run_steps(plans, ledger)
    if code:
        return code
    measured = sum(json.loads(ledger.read_text())["seconds"].values()) / 3600 if ledger.is_file() else 0.0
    try:
        rows = comparison_rows(collect(out, methods, args.identities))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = {"estimated": estimated, "estimated_device": costs.device, "measured": measured, "device": device_name()}
    for path in write_tables(out, rows, gpu):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
