"""The paper's protocol as one plan (scripts/paper_protocol.py): train the identities (or take their published
embeddings) → sample the protocol's prompts × seeds per identity → evaluate each identity → one report.

Every step is an ordinary command of this project, and each one continues where it stopped (`train.py --resume
auto`, `sample.py --run-dir`, the evaluation cache), so running the plan again after a crash redoes only what was
lost. The plan's GPU time is estimated from measured per-stage seconds (configs/eval/gpu_costs.yaml) without
loading anything.
"""

import csv
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicme.configfile import read_yaml_mapping
from magicme.errors import ConfigError
from magicme.evaluation.protocol import load_protocol
from magicme.evaluation.report import COLUMNS
from magicme.schema import sample_schema
from magicme.video_io import atomic_path

_NAME = re.compile(r"[a-z0-9_\-]+")
TRAIN_DEFAULT_STEPS = 400  # TrainConfig.max_steps, for a training config that does not set it


@dataclass
class Costs:
    """Measured GPU seconds (configs/eval/gpu_costs.yaml)."""

    device: str
    t2v_seconds: float
    reference: dict
    stage_factors: dict
    train_seconds_per_step: float


def load_costs(path: Path | str) -> Costs:
    data = read_yaml_mapping(path, "--costs")
    try:
        return Costs(str(data.device), float(data.t2v_seconds), dict(data.reference), dict(data.stage_factors),
                     float(data.train_seconds_per_step))
    except Exception as err:  # a missing key or a non-number, whatever OmegaConf calls it
        raise ConfigError(f"{path}: not a costs file ({err}); keep the keys of configs/eval/gpu_costs.yaml") from err


def video_seconds(costs: Costs, frames: int, width: int, height: int, steps: int, stages: list[str]) -> float:
    """GPU seconds of one sample: its T2V at this shape (linear in frames × pixels × steps from the measured
    reference), times 1 + the factor of every stage after the first."""
    ref = costs.reference
    t2v = costs.t2v_seconds * frames / ref["frames"] * width * height / (ref["width"] * ref["height"]) \
        * steps / ref["steps"]
    unknown = [s for s in stages if s not in costs.stage_factors]
    if unknown:
        raise ConfigError(f"stages: no measured cost for {unknown[0]!r} in the costs file; add it to stage_factors")
    return t2v * (1 + sum(costs.stage_factors[s] for s in stages[1:]))


@dataclass
class Step:
    """One command of the plan and its estimated GPU seconds."""

    what: str
    command: list[str]
    gpu_seconds: float = 0.0
    note: str = ""


@dataclass
class Plan:
    identities: list[str]
    files: dict[Path, tuple[DictConfig, str]]  # configs the plan writes before its commands run, with what they are
    steps: list[Step] = field(default_factory=list)
    costs: Costs | None = None

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_seconds for s in self.steps) / 3600

    def describe(self) -> str:
        """What --dry-run prints: the files, each command with its estimate, the total."""
        lines = [f"writes {path}: {note}" for path, (_, note) in self.files.items()]
        for number, step in enumerate(self.steps, start=1):
            lines.append(f"{number}. {step.what}: {shlex.join(step.command)}")
            if step.note:
                lines.append(f"   {step.note}")
        lines.append(f"estimated GPU time: {self.gpu_hours:.2f} GPU-hours on {self.costs.device} "
                     "(configs/eval/gpu_costs.yaml; model loading and evaluation not included)")
        return "\n".join(lines)


def parse_class_words(items: list[str], identities: list[str]) -> dict[str, str]:
    words = {}
    for item in items:
        name, _, word = item.partition("=")
        if not word.strip() or name not in identities:
            raise ConfigError(f"--class-word: {item!r} must be NAME=WORD with NAME one of the identities "
                              f"({', '.join(identities)})")
        words[name] = word.strip()
    return words


def check_identities(identities: list[str]) -> None:
    bad = [n for n in identities if not _NAME.fullmatch(n)]
    if bad or not identities or len(set(identities)) != len(identities):
        raise ConfigError(f"--identities: {identities} must be distinct lower-case names (letters, digits, _ and -), "
                          "at least one")


def train_config(base: Path, identities: list[str], dataset: Path, class_words: dict[str, str],
                 out: Path) -> DictConfig:
    """`base` (any training config) turned into one training all the identities, writing under `out`."""
    config = read_yaml_mapping(base, "--train-config")
    for key in ("name", "images_dir", "identities", "class_words"):
        config.pop(key, None)
    config.identities, config.images_dir, config.class_words = identities, f"{dataset}/{{name}}", class_words
    config.output_dir, config.copy_to_embeddings_dir = str(out / "train"), str(out / "embeddings")
    return config


def sample_config(base: Path, protocol: Path, embeddings: Path, stages: list[str] | None) -> DictConfig:
    """`base` (configs/sample/paper.yaml) with the protocol's prompts (keeping `{id}`) and seeds, reading the
    identities' embeddings from `embeddings`."""
    spec = load_protocol(protocol)
    config = read_yaml_mapping(base, "--sample-config")
    for key in ("identities", "class_words"):
        config.pop(key, None)
    config.prompts, config.seeds = list(spec.prompts), list(spec.seeds or config.get("seeds") or [42])
    config.model = config.get("model") or {}
    config.model.embeddings_dir = str(embeddings)
    if stages:
        config.stages = stages
    return config


def sample_seconds(config: DictConfig, costs: Costs) -> float:
    """GPU seconds of one sample of `config`: its own values where it sets them, the schema's defaults elsewhere."""
    defaults = sample_schema()
    value = {k: config.get(k, defaults[k]) for k in ("frames", "width", "height", "steps", "stages")}
    return video_seconds(costs, int(value["frames"]), int(value["width"]), int(value["height"]),
                         int(value["steps"]), list(value["stages"]))


def build_plan(identities: list[str], out: Path, dataset: Path, protocol: Path, sample_base: Path,
               costs: Costs, train_base: Path | None = None, embeddings: Path | None = None,
               class_words: dict[str, str] | None = None, stages: list[str] | None = None,
               eval_config: Path | None = None, launch: list[str] | None = None) -> Plan:
    """The commands and files of a protocol run; `embeddings` (published ones) replaces training."""
    check_identities(identities)
    class_words = class_words or {}
    launch = launch or ["python"]
    plan = Plan(identities, {}, costs=costs)
    published = embeddings is not None
    if not published:
        config = train_config(train_base, identities, dataset, class_words, out)
        path = out / "train.yaml"
        plan.files[path] = (config, f"{train_base} training {', '.join(identities)} from {dataset}/<name>")
        steps = int(config.get("max_steps", TRAIN_DEFAULT_STEPS))
        seconds = len(identities) * steps * costs.train_seconds_per_step
        plan.steps.append(Step("train", [*launch, "train.py", "--config", str(path), "--resume", "auto"], seconds,
                               f"{len(identities)} identities × {steps} steps × {costs.train_seconds_per_step} s = "
                               f"{seconds:.0f} GPU-s"))
        embeddings = out / "embeddings"
    config = sample_config(sample_base, protocol, embeddings, stages)
    per_sample = sample_seconds(config, costs)
    for name in identities:
        # one config per identity (a grid's class_words may only name its own identities); a trained embedding
        # carries its class word, a published one gets it from --class-word
        words = {name: class_words[name]} if published and name in class_words else {}
        one = OmegaConf.merge(config, {"identities": [name], **({"class_words": words} if words else {})})
        path = out / f"sample-{name}.yaml"
        plan.files[path] = (one, f"{sample_base} with the {len(config.prompts)} prompts and {len(config.seeds)} "
                                 f"seeds of {protocol} for {name}, embeddings from {embeddings}")
        seconds = len(config.prompts) * len(config.seeds) * per_sample
        plan.steps.append(Step(f"sample {name}", [*launch, "sample.py", "--config", str(path), "--run-dir",
                                                  str(out / "samples" / name)],
                               seconds, f"{len(config.prompts)} prompts × {len(config.seeds)} seeds × "
                                        f"{per_sample:.2f} s ({'+'.join(config.stages)}) = {seconds:.0f} GPU-s"))
    for name in identities:
        settings = ["--config", str(eval_config)] if eval_config else []
        plan.steps.append(Step(f"evaluate {name}", ["python", "scripts/evaluate.py", "--samples",
                                                    str(out / "samples" / name), "--references",
                                                    str(dataset / name), "--out", str(out / "eval" / name),
                                                    *settings]))
    return plan


def write_configs(plan: Plan) -> None:
    for path, (config, _) in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            OmegaConf.save(config, tmp)


def report_rows(metrics: dict[str, dict]) -> list[dict]:
    """One row per (identity, stage) from each identity's metrics.json, then per stage the mean over identities
    (Table 1's numbers; NaN where no identity has a value)."""
    rows = [{"identity": name, **{k: g.get(k) for k in ("stage", "videos", *COLUMNS)}}  # older files: fewer metrics
            for name, data in metrics.items() for g in data["groups"]]
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    for stage in stages:
        group = [r for r in rows if r["stage"] == stage]
        means = {}
        for key in COLUMNS:
            values = [r[key] for r in group if r[key] is not None and not math.isnan(r[key])]
            means[key] = sum(values) / len(values) if values else float("nan")
        rows.append({"identity": f"mean of {len(group)}", "stage": stage,
                     "videos": sum(r["videos"] for r in group), **means})
    return rows


def write_report(out: Path, identities: list[str]) -> Path:
    """`<out>/report.md` and `report.csv` comparing the identities and stages of a protocol run."""
    metrics = {}
    for name in identities:
        path = out / "eval" / name / "metrics.json"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; run the evaluation of {name} first (the plan's evaluate step)")
        metrics[name] = json.loads(path.read_text())
    rows = report_rows(metrics)
    fields = ["identity", "stage", "videos", *COLUMNS]
    with atomic_path(out / "report.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else \
            (f"{value:.4f}" if isinstance(value, float) else str(value))

    lines = ["# Protocol report", "", f"Identities: {', '.join(identities)}; per-identity reports: "
             f"eval/<name>/report.html. Scores are cosines (docs/evaluation.md).", "",
             "| " + " | ".join(["identity", "stage", "videos", *(COLUMNS[k][0] for k in COLUMNS)]) + " |",
             "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(cell(row[k]) for k in fields) + " |" for row in rows]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out / "report.md"
