"""Model doctor: the whole-table view of the inspector (magicme/inspector.py) for scripts/check_models.py.

The inspector checks a `model:` block from file headers; the doctor adds what only a sampling config names (the
CLIPSeg model of a clipseg Face VCD stage, the upscaler file of a Tiled VCD stage) and the optional extras under
models/, and reports everything instead of stopping at the first failure.
"""

from collections.abc import Mapping
from pathlib import Path

from magicme.errors import ConfigError
from magicme.inspector import FAIL, OK, Report, hf_model_present, inspect_extras, inspect_model, tensor_shapes


def check_models(model: Mapping, models_dir: Path | str = "models", extras: bool = True) -> Report:
    """Check a `model:` config block (and, with `extras`, the optional models under `models_dir`)."""
    report = inspect_model(model)
    if extras:
        inspect_extras(report, models_dir)
    return report


def check_sample_config(cfg: Mapping, models_dir: Path | str = "models") -> Report:
    """Everything a sampling config needs: its `model:` block, the CLIPSeg model of a clipseg Face VCD stage, the
    upscaler file of a Tiled VCD stage, and the optional extras."""
    stages = set(cfg.get("stages") or [])
    report = check_models(cfg["model"], models_dir)
    if "face" in stages and cfg["face"]["detector"] == "clipseg":
        folder = Path(str(cfg["face"]["clipseg_model"]))
        if hf_model_present(folder):
            report.add("face.clipseg_model", folder, OK, "CLIPSeg for Face VCD")
        else:
            report.add("face.clipseg_model", folder, FAIL, "no CLIPSeg model (config.json + weights); "
                                                           "bash download_checkpoint.sh --only clipseg")
    if "tiled" in stages and cfg["tiled"]["upscaler"] != "lanczos":
        path = Path(str(cfg["tiled"]["upscaler"]))
        try:
            report.add("tiled.upscaler", path, OK, f"{len(tensor_shapes(path))} tensors")
        except ConfigError as err:
            report.fail("tiled.upscaler", path, err)
    return report
