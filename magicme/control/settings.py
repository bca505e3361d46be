"""The `control:` entries of a sampling config, checked before any model loads (no torch here).

    control:
      - {model: models/controlnet/openpose, video: pose.mp4, scale: 1.0, start: 0.0, end: 1.0}
      - {model: models/controlnet/canny, type: canny, from: input_video, low: 100, high: 200}

Each entry is one ControlNet with its control video: a clip (`video`) or one extracted from the input clip by a
preprocessor (`type` + `from`). The entries are free-form in the schema (`from` is a Python keyword), so their keys,
types and ranges are checked here, each problem naming `control[i].<key>`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

ENTRY_KEYS = ("model", "video", "type", "from", "scale", "start", "end", "low", "high")
TYPES = ("canny",)  # preprocessors that exist
LATER_TYPES = ("pose", "depth", "lineart")  # issue 16's later parts (docs/control.md)
SOURCES = ("input_video",)
CANNY_DEFAULTS = {"low": 100.0, "high": 200.0}  # ControlNet's canny annotator defaults


@dataclass(frozen=True)
class ControlEntry:
    """One checked `control:` entry: a ControlNet, where its video comes from, and when and how strongly it acts."""

    key: str  # control[i], for messages and file names
    model: str
    video: str | None = None  # a control clip, or None when a preprocessor extracts it
    type: str | None = None  # the preprocessor (canny)
    source: str | None = None  # what it is extracted from (input_video)
    scale: float = 1.0  # ControlNet residuals × scale (diffusers' controlnet_conditioning_scale)
    start: float = 0.0  # acts on the steps i with start ≤ i/steps and (i+1)/steps ≤ end
    end: float = 1.0
    low: float = CANNY_DEFAULTS["low"]
    high: float = CANNY_DEFAULTS["high"]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def model_problem(key: str, path) -> str | None:
    """A ControlNet must be a diffusers folder (config.json naming ControlNetModel)."""
    if not isinstance(path, str) or not path:
        return f"{key}: must be the path of a diffusers ControlNet folder"
    folder = Path(path)
    if not folder.exists():
        return f"{key}: {path} not found; give a diffusers ControlNet folder (bash download_checkpoint.sh)"
    config = folder / "config.json"
    if folder.is_file() or not config.is_file():
        return (f"{key}: {path} is not a diffusers ControlNet folder (no config.json); single-file ControlNets are not "
                "read yet: convert one with diffusers' ControlNetModel.from_single_file(...).save_pretrained(folder)")
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        name = None
    if name != "ControlNetModel":
        return f"{key}: {path} holds a {name or 'unreadable config'}, not a ControlNetModel"
    return None


def entry_problems(i: int, entry, input_video: str | None) -> list[str]:
    """The problems of `control[i]`, most basic first."""
    key = f"control[{i}]"
    if not isinstance(entry, (dict, DictConfig)):
        return [f"{key}: expected a mapping {{model, video, scale, start, end}} or {{model, type, from}}"]
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        return [f"{key}: unknown key(s) {unknown}; allowed: {', '.join(ENTRY_KEYS)}"]
    problems = [p for p in [model_problem(f"{key}.model", entry.get("model"))] if p]
    video, kind = entry.get("video"), entry.get("type")
    if (video is None) == (kind is None):
        problems.append(f"{key}: give either video (a control clip) or type and from (extract it from the input "
                        "clip), not both or neither")
    elif video is not None and not (isinstance(video, str) and Path(video).exists()):
        problems.append(f"{key}.video: {video} not found; give an MP4/GIF file or a folder of frames")
    elif kind is not None:
        if kind not in TYPES:
            later = f" ({', '.join(LATER_TYPES)} are not built yet: docs/control.md)" if kind in LATER_TYPES else ""
            problems.append(f"{key}.type: {kind!r} is not a preprocessor here; available: {', '.join(TYPES)}{later}")
        elif entry.get("from") not in SOURCES:
            problems.append(f"{key}.from: {entry.get('from')!r} must be one of {', '.join(SOURCES)}")
        elif input_video is None:
            problems.append(f"{key}.from: input_video is not set; set input_video (the clip to edit) or give "
                            f"{key}.video")
    if kind is None and ("from" in entry or "low" in entry or "high" in entry):
        problems.append(f"{key}: from, low and high belong to a preprocessor; set type: canny or remove them")
    numbers = {name: entry.get(name, default) for name, default in
               (("scale", 1.0), ("start", 0.0), ("end", 1.0), ("low", 0.0), ("high", 0.0))}
    bad = [name for name, value in numbers.items() if not is_number(value)]
    if bad:
        return problems + [f"{key}.{bad[0]}: {numbers[bad[0]]!r} is not a number"]
    if numbers["scale"] < 0:
        problems.append(f"{key}.scale: {numbers['scale']} must be >= 0 (0 = no control)")
    if not 0.0 <= numbers["start"] < numbers["end"] <= 1.0:
        problems.append(f"{key}.start, {key}.end: {numbers['start']}, {numbers['end']} must satisfy "
                        "0 <= start < end <= 1 (fractions of the denoising steps)")
    if min(numbers["low"], numbers["high"]) < 0:
        problems.append(f"{key}.low, {key}.high: canny thresholds must be >= 0")
    return problems


def control_problems(cfg: DictConfig) -> list[str]:
    """Every `control:` entry's problems, in order."""
    return [p for i, entry in enumerate(cfg.control) for p in entry_problems(i, entry, cfg.input_video)]


def control_entries(cfg: DictConfig) -> list[ControlEntry]:
    """The checked entries (run `control_problems` first)."""
    entries = []
    for i, entry in enumerate(cfg.control):
        values = {k: v for k, v in entry.items() if k in ENTRY_KEYS and k != "from"}
        values = {k: float(v) if is_number(v) else v for k, v in values.items()}
        entries.append(ControlEntry(key=f"control[{i}]", source=entry.get("from"), **values))
    return entries
