"""The `control:` entries of a sampling config, checked before any model loads (no torch here).

    control:
      - {model: models/controlnet/openpose, video: pose.mp4, scale: 1.0, start: 0.0, end: 1.0}
      - {model: models/controlnet/canny, type: canny, from: input_video, low: 100, high: 200}
      - {model: models/controlnet/depth, type: depth, from: input_video, preprocessor: models/control/depth-anything-v2-small}
      - {model: control_v11p_sd15_lineart.safetensors, config: models/controlnet/lineart, type: lineart, from: input_video}

Each entry is one ControlNet — a diffusers folder, or a single file in the original ControlNet layout with `config`
a diffusers ControlNet folder describing it — with its control video: a clip (`video`) or one extracted from the
input clip by a preprocessor (`type` + `from`). `depth` and `pose` run a model (`preprocessor`, a transformers
folder; default the `control` download group's); `pose` can box the person with CLIPSeg (`person`, its folder). The entries are free-form in the schema (`from` is a Python keyword), so their keys,
types and ranges are checked here, each problem naming `control[i].<key>`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

ENTRY_KEYS = ("model", "config", "video", "type", "from", "preprocessor", "person", "scale", "start", "end", "low",
              "high")
TYPES = ("canny", "lineart", "depth", "pose")  # preprocessors
SOURCES = ("input_video",)
CANNY_DEFAULTS = {"low": 100.0, "high": 200.0}  # ControlNet's canny annotator defaults
PREPROCESSORS = {  # the model folders of the preprocessors that run one (download group `control`)
    "depth": "models/control/depth-anything-v2-small",
    "pose": "models/control/vitpose-base-simple",
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".ckpt", ".bin")
DOWNLOAD = "bash download_checkpoint.sh --only control"


@dataclass(frozen=True)
class ControlEntry:
    """One checked `control:` entry: a ControlNet, where its video comes from, and when and how strongly it acts."""

    key: str  # control[i], for messages and file names
    model: str
    config: str | None = None  # for a single-file `model`: a diffusers ControlNet folder with its config.json
    video: str | None = None  # a control clip, or None when a preprocessor extracts it
    type: str | None = None  # the preprocessor (canny, lineart, depth, pose)
    source: str | None = None  # what it is extracted from (input_video)
    preprocessor: str | None = None  # the depth / pose model folder
    person: str | None = None  # pose: a CLIPSeg folder boxing the person in each frame (None: the whole frame)
    scale: float = 1.0  # ControlNet residuals × scale (diffusers' controlnet_conditioning_scale)
    start: float = 0.0  # acts on the steps i with start ≤ i/steps and (i+1)/steps ≤ end
    end: float = 1.0
    low: float = CANNY_DEFAULTS["low"]
    high: float = CANNY_DEFAULTS["high"]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def controlnet_folder_problem(key: str, path: str) -> str | None:
    """None when `path` is a diffusers ControlNet folder (config.json naming ControlNetModel)."""
    config = Path(path) / "config.json"
    if Path(path).is_file() or not config.is_file():
        return f"{key}: {path} is not a diffusers ControlNet folder (no config.json)"
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        name = None
    if name != "ControlNetModel":
        return f"{key}: {path} holds a {name or 'unreadable config'}, not a ControlNetModel"
    return None


def model_problem(key: str, path, config) -> str | None:
    """A ControlNet is a diffusers folder, or a single file (original layout) with `config` a diffusers folder."""
    if not isinstance(path, str) or not path:
        return f"{key}.model: must be the path of a diffusers ControlNet folder or a single-file ControlNet"
    if not Path(path).exists():
        return f"{key}.model: {path} not found; give a diffusers ControlNet folder ({DOWNLOAD})"
    if Path(path).is_file():
        if not path.endswith(SINGLE_FILE_SUFFIXES):
            return f"{key}.model: {path} is not a ControlNet file ({', '.join(SINGLE_FILE_SUFFIXES)})"
        if config is None:
            return (f"{key}.config: {path} is a single file; set config to a diffusers ControlNet folder of the same "
                    f"architecture (its config.json describes the file; {DOWNLOAD})")
        if not (isinstance(config, str) and Path(config).exists()):
            return f"{key}.config: {config} not found; give a diffusers ControlNet folder ({DOWNLOAD})"
        return controlnet_folder_problem(f"{key}.config", config)
    if config is not None:
        return f"{key}.config: only for a single-file model; {path} is a folder with its own config.json"
    problem = controlnet_folder_problem(f"{key}.model", path)
    if problem and "no config.json" in problem:
        return problem + "; for a single-file ControlNet give the file itself"
    return problem


def preprocessor_problem(key: str, kind: str, path) -> str | None:
    """A depth / pose preprocessor needs its transformers model folder; other types take none."""
    if kind not in PREPROCESSORS:
        return f"{key}.preprocessor: {kind} needs no model; remove preprocessor" if path is not None else None
    path = PREPROCESSORS[kind] if path is None else path
    if not (isinstance(path, str) and (Path(path) / "config.json").is_file()):
        return f"{key}.preprocessor: no {kind} model at {path} (a transformers folder with config.json); {DOWNLOAD}"
    return None


def window_problems(key: str, scale: float, start: float, end: float) -> list[str]:
    """A conditioning's strength and the share of the steps it acts on (ControlNets, SparseCtrl)."""
    problems = []
    if scale < 0:
        problems.append(f"{key}.scale: {scale} must be >= 0 (0 = no control)")
    if not 0.0 <= start < end <= 1.0:
        problems.append(f"{key}.start, {key}.end: {start}, {end} must satisfy 0 <= start < end <= 1 (fractions of "
                        "the denoising steps)")
    return problems


def entry_problems(i: int, entry, input_video: str | None) -> list[str]:
    """The problems of `control[i]`, most basic first."""
    key = f"control[{i}]"
    if not isinstance(entry, (dict, DictConfig)):
        return [f"{key}: expected a mapping {{model, video, scale, start, end}} or {{model, type, from}}"]
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        return [f"{key}: unknown key(s) {unknown}; allowed: {', '.join(ENTRY_KEYS)}"]
    problems = [p for p in [model_problem(key, entry.get("model"), entry.get("config"))] if p]
    video, kind = entry.get("video"), entry.get("type")
    if (video is None) == (kind is None):
        problems.append(f"{key}: give either video (a control clip) or type and from (extract it from the input "
                        "clip), not both or neither")
    elif video is not None and not (isinstance(video, str) and Path(video).exists()):
        problems.append(f"{key}.video: {video} not found; give an MP4/GIF file or a folder of frames")
    elif kind is not None:
        if kind not in TYPES:
            problems.append(f"{key}.type: {kind!r} is not a preprocessor here; available: {', '.join(TYPES)}")
        elif entry.get("from") not in SOURCES:
            problems.append(f"{key}.from: {entry.get('from')!r} must be one of {', '.join(SOURCES)}")
        elif input_video is None:
            problems.append(f"{key}.from: input_video is not set; set input_video (the clip to edit) or give "
                            f"{key}.video")
        else:
            problems += [p for p in [preprocessor_problem(key, kind, entry.get("preprocessor"))] if p]
    if kind is None and any(k in entry for k in ("from", "preprocessor", "low", "high")):
        problems.append(f"{key}: from, preprocessor, low and high belong to a preprocessor; set type or remove them")
    elif kind not in (None, "canny") and ("low" in entry or "high" in entry):
        problems.append(f"{key}: low and high are canny's thresholds; remove them for type {kind}")
    person = entry.get("person")
    if person is not None and kind != "pose":
        problems.append(f"{key}.person: only for type pose (it boxes the person for the pose model); remove it")
    elif person is not None and not (isinstance(person, str) and (Path(person) / "config.json").is_file()):
        problems.append(f"{key}.person: no CLIPSeg model at {person}; bash download_checkpoint.sh --only clipseg "
                        "(or remove person: the whole frame is the person's box)")
    numbers = {name: entry.get(name, default) for name, default in
               (("scale", 1.0), ("start", 0.0), ("end", 1.0), ("low", 0.0), ("high", 0.0))}
    bad = [name for name, value in numbers.items() if not is_number(value)]
    if bad:
        return problems + [f"{key}.{bad[0]}: {numbers[bad[0]]!r} is not a number"]
    problems += window_problems(key, numbers["scale"], numbers["start"], numbers["end"])
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
        if entry.get("type") in PREPROCESSORS:
            values.setdefault("preprocessor", PREPROCESSORS[entry["type"]])
        entries.append(ControlEntry(key=f"control[{i}]", source=entry.get("from"), **values))
    return entries
