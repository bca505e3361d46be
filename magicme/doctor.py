"""Model doctor: the whole-table view of the inspector (magicme/inspector.py) for scripts/check_models.py.

The inspector checks a `model:` block from file headers; the doctor adds each configured stage's own checks, the
`control:` and `sparse_control:` entries, a row for every other model the run loads (`schema.model_files`: each
ControlNet, preprocessor and person segmenter, SparseCtrl, Face VCD's CLIPSeg, Tiled VCD's upscaler, from their
headers as sample.py inspects them) and the optional extras under models/, and reports everything instead of stopping
at the first failure, as sample.py does.
"""

from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from magicme.control.settings import control_problems
from magicme.control.sparse import sparse_problems
from magicme.inspector import FAIL, OK, Report, inspect_extras, inspect_files, inspect_model
from magicme.schema import model_files, stage_problems


def check_models(model: Mapping, models_dir: Path | str = "models", extras: bool = True) -> Report:
    """Check a `model:` config block (and, with `extras`, the optional models under `models_dir`)."""
    report = inspect_model(model)
    if extras:
        inspect_extras(report, models_dir)
    return report


def check_sample_config(cfg: DictConfig, models_dir: Path | str = "models") -> Report:
    """Everything a sampling config needs: its `model:` block, what each configured stage checks (magicme/stages/),
    the control entries, every other model the run loads, and the optional extras."""
    report = check_models(cfg.model, models_dir)
    problems = stage_problems(cfg)
    guidance = control_problems(cfg) + sparse_problems(cfg)
    for problem in problems + guidance:
        key, _, detail = problem.partition(": ")
        report.add(key, "-", FAIL, detail)
    if not problems:
        report.add("stages", "-", OK, f"{', '.join(cfg.stages)}: settings and files checked")
    if not problems and not guidance:
        inspect_files(model_files(cfg), report)
    return report
