"""Methods side by side (scripts/compare.py): one protocol plan (magicme/evaluation/paper.py) per method — train
→ sample the same prompt × seed grid → evaluate each identity — then one table of every metric's mean and 95 %
confidence interval per method, with the GPU-hours estimated before and measured after.

A method is a change to the training config of the plan: `tokens` is the paper's masked extended textual
inversion as the training config says, `tokens-unmasked` the same with the loss over the whole image every step
(`use_orig_img_rate: 1`, the paper's mask ablation). Methods the project cannot train or sample yet are refused
by name with what is missing."""

import csv
import html
import json
import math
from pathlib import Path

import numpy as np

from magicme.errors import ConfigError
from magicme.evaluation.paper import Plan, build_plan
from magicme.evaluation.report import COLUMNS
from magicme.video_io import atomic_path

METHODS = {  # method → training config changes
    "tokens": {},
    "tokens-unmasked": {"use_orig_img_rate": 1.0},
}
MISSING = {  # methods of the issue the project cannot run yet → what is missing
    "lora": "LoRA / DreamBooth-LoRA identity training (train.py trains ID tokens only)",
    "tokens+lora": "LoRA identity training in train.py and loading an identity LoRA beside its tokens in sample.py",
    "ip-adapter": "IP-Adapter image-prompt conditioning in sample.py (no adapter loader yet)",
}
PAPER_PROMPTS, PAPER_SEEDS = 25, 4  # the paper's Table 1: 25 prompts × 4 seeds per identity


def parse_methods(text: str) -> list[str]:
    """`tokens,tokens-unmasked` → the list; an unknown or not-yet-possible method is one error line."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"--methods: {text!r} must name distinct methods, comma-separated ({', '.join(METHODS)})")
    for method in methods:
        if method in MISSING:
            raise ConfigError(f"--methods: {method} needs {MISSING[method]}, which this project does not have yet; "
                              f"leave it out (available: {', '.join(METHODS)})")
        if method not in METHODS:
            raise ConfigError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")
    return methods


def build_comparison(methods: list[str], out: Path, **plan_args) -> dict[str, Plan]:
    """One plan per method under `out/<method>/`, its training config changed as the method says (in memory:
    nothing is written until the plans run)."""
    plans = {}
    for method in methods:
        plan = build_plan(out=out / method, **plan_args)
        train = out / method / "train.yaml"
        if METHODS[method] and train not in plan.files:
            raise ConfigError(f"--methods: {method} changes training, but --embeddings skips it; leave out "
                              f"--embeddings or the method")
        if train in plan.files:
            config, note = plan.files[train]
            for key, value in METHODS[method].items():
                config[key] = value
            plan.files[train] = (config, f"{note}; method {method}")
        plans[method] = plan
    return plans


def check_paper_protocol(plan: Plan) -> None:
    """`--preset paper`: the sampling configs must hold the paper's 25 prompts × 4 seeds."""
    for path, (config, _) in plan.files.items():
        if path.name.startswith("sample-") and (len(config.prompts), len(config.seeds)) != (PAPER_PROMPTS,
                                                                                             PAPER_SEEDS):
            raise ConfigError(f"--prompts: the paper preset needs {PAPER_PROMPTS} prompts × {PAPER_SEEDS} seeds, "
                              f"the protocol gives {len(config.prompts)} × {len(config.seeds)}")


def interval(values: list[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % confidence interval (Student t), n) over the finite values; NaN half-width
    for fewer than 2."""
    from scipy import stats

    finite = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(finite) == 0:
        return float("nan"), float("nan"), 0
    if len(finite) < 2:
        return float(finite[0]), float("nan"), 1
    half = stats.t.ppf(0.975, len(finite) - 1) * finite.std(ddof=1) / math.sqrt(len(finite))
    return float(finite.mean()), float(half), len(finite)


def comparison_rows(videos: dict[str, list[dict]]) -> list[dict]:
    """Per (method, stage): every metric's mean and 95 % CI over all videos of all identities."""
    rows = []
    for method, items in videos.items():
        for stage in dict.fromkeys(v["stage"] for v in items):
            group = [v for v in items if v["stage"] == stage]
            row = {"method": method, "stage": stage, "videos": len(group)}
            for key in COLUMNS:
                row[key], row[f"{key}_ci95"], _ = interval([v.get(key) for v in group])
            rows.append(row)
    return rows


def collect(out: Path, methods: list[str], identities: list[str]) -> dict[str, list[dict]]:
    videos = {}
    for method in methods:
        videos[method] = []
        for name in identities:
            path = out / method / "eval" / name / "metrics.json"
            if not path.is_file():
                raise ConfigError(f"{path}: missing; run the comparison again to finish {method}'s evaluation")
            videos[method] += [{**v, "identity": name} for v in json.loads(path.read_text())["videos"]]
    return videos


def cell(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def write_tables(out: Path, rows: list[dict], gpu: dict) -> list[Path]:
    """comparison.csv (means and CI half-widths), comparison.md and comparison.html (mean ± CI)."""
    fields = ["method", "stage", "videos", *(f for k in COLUMNS for f in (k, f"{k}_ci95"))]
    with atomic_path(out / "comparison.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    hours = (f"GPU-hours: estimated {gpu['estimated']:.3f} before, measured {gpu['measured']:.3f} after "
             f"(wall-clock of the training and sampling commands on {gpu['device']})")
    headings = ["method", "stage", "videos", *(COLUMNS[k][0] for k in COLUMNS)]
    cells = [[r["method"], r["stage"], str(r["videos"]), *(cell(r[k], r[f"{k}_ci95"]) for k in COLUMNS)]
             for r in rows]
    lines = ["# Method comparison", "", "Mean ± half-width of the 95 % confidence interval over all videos of all "
             "identities (docs/evaluation.md). " + hours + ".", "",
             "| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    table = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headings) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    page = (f"<!doctype html><meta charset='utf-8'><title>Method comparison</title><h1>Method comparison</h1>"
            f"<p>{html.escape(hours)}. Per identity: &lt;method&gt;/eval/&lt;name&gt;/report.html.</p>"
            f"<table border='1' cellspacing='0' cellpadding='4'>{table}</table>")
    with atomic_path(out / "comparison.html") as tmp:
        tmp.write_text(page)
    return [out / "comparison.csv", out / "comparison.md", out / "comparison.html"]
