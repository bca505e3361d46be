"""SparseCtrl keyframe control of the first stage (t2v, edit): `sparse_control:` in a sampling config
(docs/control.md, "SparseCtrl").

    sparse_control:
      model: models/sparsectrl/rgb          # a diffusers SparseControlNetModel folder
      frames: {0: first.png, 15: last.png}  # keyframe images by frame number (from 0)
      type: rgb                             # rgb (images, VAE-encoded) | scribble (line drawings, pixels)
      scale: 1.0
      start: 0.0
      end: 1.0

Here: the checks before any model loads (import-light: no torch), each problem naming `sparse_control.<key>`, and the
stage-side inputs (`SparseInputs`: keyframe images read and fitted in `prepare`, the net loaded and the images
encoded in `setup`). The residuals and the UNet wrapper are in magicme/control/sparse_net.py.

A SparseCtrl net's config says what it was trained on: `use_simplified_condition_embedding` with 4 conditioning
channels takes VAE latents of RGB images (AnimateDiff's `latent_condition.yaml`, `v3_sd15_sparsectrl_rgb`); the
convolutional embedding with 3 channels takes pixels (`image_condition.yaml`, `v3_sd15_sparsectrl_scribble`). Both
were trained with the AnimateDiff v3 motion module (no mid block, 32 positions; `inference-v3.yaml`), so a run must
use a v3-shaped module.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from magicme.control.settings import is_number, window_problems
from magicme.errors import ConfigError

KEY = "sparse_control"
KEYS = ("model", "frames", "type", "scale", "start", "end")
# type: (conditioning channels, use_simplified_condition_embedding) of the nets trained for it
TYPES = {"rgb": (4, True), "scribble": (3, False)}
NET_DEFAULTS = {"conditioning_channels": 4, "use_simplified_condition_embedding": True, "motion_max_seq_length": 32}
MOTION_VERSION = "v3"
DOWNLOAD = "bash download_checkpoint.sh --only control"


@dataclass(frozen=True)
class SparseSettings:
    """The checked `sparse_control:` block."""

    model: str
    frames: dict[int, str]  # frame number → keyframe image, sorted by frame
    type: str  # rgb | scribble
    scale: float = 1.0  # residuals × scale (0 = no control)
    start: float = 0.0  # acts on the steps i with start ≤ i/steps and (i+1)/steps ≤ end, as ControlNets do
    end: float = 1.0


def net_config(path: str) -> dict | None:
    """A folder's config.json as a dict, None when there is none or it is unreadable."""
    config = Path(path) / "config.json"
    try:
        value = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def model_problem(path) -> tuple[str | None, dict | None]:
    """(problem, config) of `sparse_control.model`: a diffusers SparseControlNetModel folder."""
    key = f"{KEY}.model"
    if not isinstance(path, str) or not path:
        return f"{key}: must be the path of a diffusers SparseControlNetModel folder ({DOWNLOAD})", None
    if not Path(path).exists():
        return f"{key}: {path} not found; give a diffusers SparseControlNetModel folder ({DOWNLOAD})", None
    config = net_config(path) if Path(path).is_dir() else None
    if config is None:
        return (f"{key}: {path} is not a diffusers SparseControlNetModel folder (no readable config.json); "
                f"use the diffusers conversion, e.g. guoyww/animatediff-sparsectrl-rgb ({DOWNLOAD})"), None
    name = config.get("_class_name")
    if name != "SparseControlNetModel":
        return f"{key}: {path} holds a {name or 'config without _class_name'}, not a SparseControlNetModel", None
    return None, {**NET_DEFAULTS, **config}


def type_problem(kind, path: str, config: dict) -> str | None:
    """`type` must be one of TYPES and match what the net's config says it was trained on."""
    if not isinstance(kind, str) or kind not in TYPES:
        return f"{KEY}.type: {kind!r} must be one of {', '.join(TYPES)}"
    ours = (config["conditioning_channels"], bool(config["use_simplified_condition_embedding"]))
    theirs = [name for name, shape in TYPES.items() if shape == ours]
    if ours != TYPES[kind]:
        made = f"a net for type {theirs[0]}" if theirs else "neither an rgb nor a scribble net"
        return (f"{KEY}.type: {kind} does not fit {path}: it takes {ours[0]} conditioning channels with "
                f"use_simplified_condition_embedding {str(ours[1]).lower()} ({made}); set type: "
                f"{theirs[0] if theirs else 'to what the net was trained on'} or use a {kind} net")
    return None


def image_problem(key: str, path) -> str | None:
    """A keyframe image must exist and open as an image (its header only: pixels are read in `prepare`)."""
    if not isinstance(path, str) or not Path(path).is_file():
        return f"{key}: {path} not found; give a PNG/JPEG image"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None
    except (UnidentifiedImageError, OSError) as err:
        return f"{key}: cannot read {path} as an image ({type(err).__name__}); give a PNG/JPEG image"


def frames_problems(frames, count: int) -> list[str]:
    """`frames`: a non-empty {frame number: image} mapping, frame numbers in [0, count)."""
    key = f"{KEY}.frames"
    if not isinstance(frames, (dict, DictConfig)) or len(frames) == 0:
        return [f"{key}: must map frame numbers to keyframe images, e.g. {{0: first.png, 15: last.png}}"]
    problems = []
    for frame, image in frames.items():
        if not (isinstance(frame, int) and not isinstance(frame, bool) and 0 <= frame < count):
            problems.append(f"{key}: keyframe {frame!r} is not an integer frame in [0, {count}) (frames counted "
                            f"from 0)")
        else:
            problems += [p for p in [image_problem(f"{key}[{frame}]", image)] if p]
    return problems


def sparse_problems(cfg: DictConfig) -> list[str]:
    """The problems of the `sparse_control:` block (none when it is not set), most basic first."""
    block = cfg.get(KEY)
    if block is None:
        return []
    if not isinstance(block, (dict, DictConfig)):
        return [f"{KEY}: expected a mapping {{model, frames, type, scale, start, end}}"]
    unknown = sorted(set(block) - set(KEYS))
    if unknown:
        return [f"{KEY}: unknown key(s) {unknown}; allowed: {', '.join(KEYS)}"]
    problem, config = model_problem(block.get("model"))
    problems = [problem] if problem else []
    if config is not None:
        problems += [p for p in [type_problem(block.get("type"), block.model, config)] if p]
        limit = config["motion_max_seq_length"]
        if cfg.frames > limit:
            problems.append(f"{KEY}.model: the SparseCtrl net sees all {cfg.frames} frames at once, at most its "
                            f"motion_max_seq_length {limit}; lower frames")
    problems += frames_problems(block.get("frames"), cfg.frames)
    numbers = {name: block.get(name, default) for name, default in (("scale", 1.0), ("start", 0.0), ("end", 1.0))}
    bad = [name for name, value in numbers.items() if not is_number(value)]
    if bad:
        return problems + [f"{KEY}.{bad[0]}: {numbers[bad[0]]!r} is not a number"]
    return problems + window_problems(KEY, numbers["scale"], numbers["start"], numbers["end"])


def motion_problem(cfg: DictConfig, version: str | None) -> str | None:
    """SparseCtrl nets were trained with the v3 motion module: another version is an error (from its header)."""
    if cfg.get(KEY) is None or version == MOTION_VERSION:
        return None
    return (f"{KEY}: SparseCtrl nets were trained with the AnimateDiff v3 motion module (no mid block, 32 frames), "
            f"but model.motion_module {cfg.model.motion_module} is {version or 'not an SD1.5 module'}; use "
            f"v3_sd15_mm.ckpt")


def sparse_settings(cfg: DictConfig) -> SparseSettings | None:
    """The checked block (run `sparse_problems` first); None when it is not set."""
    block = cfg.get(KEY)
    if block is None:
        return None
    numbers = {k: float(block[k]) for k in ("scale", "start", "end") if k in block}
    return SparseSettings(model=block.model, frames={int(k): str(v) for k, v in sorted(block.frames.items())},
                          type=block.type, **numbers)


class SparseInputs:
    """A first stage's SparseCtrl: its keyframes read and fitted before any model loads (`prepare`), the net loaded
    and the keyframes encoded for it once the pipeline is there (`setup`)."""

    def __init__(self, cfg: DictConfig):
        self.settings = sparse_settings(cfg)
        self.frames, self.height, self.width = cfg.frames, cfg.height, cfg.width
        self.images = None  # (keyframes, height, width, 3) in [0, 1], fitted to the run
        self.control = None  # magicme.control.sparse_net.SparseControl once set up; None without sparse_control

    def prepare(self) -> None:
        """Each keyframe image resized to cover width × height and centre-cropped, as control clips are."""
        if self.settings is None:
            return
        import numpy as np

        from magicme.images import read_image
        from magicme.video_io import fit_video

        images = []
        for frame, path in self.settings.frames.items():
            try:
                image = read_image(path, "keyframe image")
            except ConfigError as err:
                raise ConfigError(f"{KEY}.frames[{frame}]: {err}") from err
            images.append(fit_video(image[None], self.height, self.width)[0])
        self.images = np.stack(images)

    def setup(self, pipe) -> None:
        """Load the net in the pipeline's precision; one made for another UNet is an error naming it."""
        if self.settings is None:
            return
        from magicme.control.sparse_net import SparseControl

        s = self.settings
        self.control = SparseControl.load(s.model, s.type, self.images, list(s.frames), self.frames, s.scale, s.start,
                                          s.end, pipe)
        net, unet = self.control.net.config, pipe.t2v.unet.config
        ours = (list(net.block_out_channels), net.cross_attention_dim)
        theirs = (list(unet.block_out_channels), unet.cross_attention_dim)
        if ours != theirs:
            raise ConfigError(f"{KEY}.model: {s.model} is a SparseCtrl net for a UNet with channels, text width "
                              f"{ours}, the base model has {theirs}; use a SparseCtrl net of the base's family")
