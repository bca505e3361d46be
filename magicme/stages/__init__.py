"""Stages: what a sample goes through, in the order `stages:` lists them.

A first stage makes the video (`t2v` from text, `edit` from `input_video`); later stages refine it (`face`,
`tiled`). Every stage's video is saved. A stage is a subclass of `Stage` in its own module, registered with
`@register_stage`; the built-in ones are imported from BUILTIN_STAGES below. Adding a stage = one module + one
line there (or `register_stage` from your own code: the schema, the checks and the sampling loop pick it up).

What a stage declares:
- `name`: its name in `stages:` and, when it has settings, the config block holding them (`face:`);
- `Config`: a dataclass of its settings (its defaults are the block's defaults), or None;
- `first`: True when it makes the video (the first entry of `stages:`) rather than refining one;
- `check(cfg)`: the problems of its settings, run before any model loads (files exist, ranges, installed extras);
- `prepare()`: read its inputs once per run, before any model loads (a bad input video fails fast);
- `setup(pipe)`: load its helper models once per run, after the pipeline (a detector, an upscaler);
- `save_inputs(out)`: write what it derived from its inputs into the run folder (an extracted control video);
- `__call__(pipe, video, sample, generator) -> (video, info)`: do the work; `info` goes into samples.jsonl.

Stage modules are imported when a config is read, so they import only light modules at the top and the heavy ones
(torch, transformers, dlib) inside `prepare`/`setup`/`__call__`.
"""

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from omegaconf import DictConfig, OmegaConf

from magicme.limits import MAX_STEPS
from magicme.prompts import Prompt, keyframes, slug
from magicme.steps import schedule_problems, scheduler_block_problems

BUILTIN_STAGES = (
    "magicme.stages.t2v",
    "magicme.stages.edit",
    "magicme.stages.face",
    "magicme.stages.tiled",
)


@dataclass(frozen=True)
class Sample:
    """One video to render: a prompt × seed × identity, with the settings that may differ per prompt."""

    index: int  # position in the grid: the order of samples.jsonl and grid.gif, not part of any name
    prompt: Prompt  # a string, or {frame: text} for prompt travel (magicme/travel.py)
    negative_prompt: Prompt
    seed: int
    gamma: float
    identity: str | None = None  # the grid identity filled into the prompt's {id} (magicme/grid.py)
    hashes: tuple[tuple[str, str], ...] = ()  # (stage, hash of what its video depends on): magicme/naming.py

    @property
    def slug(self) -> str:
        """The readable part of its names: `[<identity>-]<words of the first keyframe>-<seed>`."""
        words = slug(next(iter(keyframes(self.prompt).values())))
        return f"{self.identity + '-' if self.identity else ''}{words}-{self.seed}"

    def stage_hash(self, stage: str) -> str:
        return dict(self.hashes)[stage]

    @property
    def hash(self) -> str:
        """The hash of its first stage's video."""
        return self.hashes[0][1]

    @property
    def name(self) -> str:
        """File stem of its first-stage video: `<slug>-<hash>`; the same sample always gets the same name and a
        changed setting a new one."""
        return f"{self.slug}-{self.hash}"


@dataclass(frozen=True)
class RunSettings:
    """The run-wide settings a stage falls back on when its own block leaves them unset."""

    steps: int
    guidance_scale: float
    frames: int
    width: int
    height: int
    fps: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "RunSettings":
        return cls(cfg.steps, cfg.guidance_scale, cfg.frames, cfg.width, cfg.height, cfg.fps)


class Stage:
    """Base class of every stage plug-in (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type | None] = None
    first: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig, progress: bool = False):
        self.settings: Any = OmegaConf.to_object(cfg[self.name]) if self.Config is not None else None
        self.run = RunSettings.from_config(cfg)
        self.progress = progress  # per-step progress bars, named by the stage (and face or tile)

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        """Problems with this stage's settings in `cfg`, each `<key>: <what>; <what to do>`."""
        return []

    def prepare(self) -> None:
        """Read the stage's inputs, once per run, before any model loads."""

    def setup(self, pipe) -> None:
        """Load the stage's helper models, once per run, after the pipeline has loaded."""

    def save_inputs(self, out: Path) -> None:
        """Write what the stage derived from its inputs (an extracted control video) into the run folder `out`,
        once per run, for the user to inspect."""

    def __call__(self, pipe, video: np.ndarray | None, sample: Sample, generator) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def output_stem(self, sample: Sample) -> str:
        """First stages write `<sample>`, later ones `<sample>-<hash of this stage's video>_<stage>`."""
        return sample.name if self.first else f"{sample.name}-{sample.stage_hash(self.name)}_{self.name}"


STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Make a stage available under `cls.name` (a class decorator)."""
    STAGES[cls.name] = cls
    return cls


def installed(module: str) -> bool:
    """Whether an optional package is importable, without importing it."""
    return importlib.util.find_spec(module) is not None


def denoise_problems(key: str, settings, run_steps: int) -> list[str]:
    """Range checks every partial-denoise stage shares: its strength, its optional steps / guidance_scale / gamma
    (null = the run's or the sample's value) and scheduler block, and the schedule they make (magicme/steps.py)."""
    checks = [
        (0.0 <= settings.strength <= 1.0, f"{key}.strength: {settings.strength} not in [0, 1]"),
        (settings.steps is None or 1 <= settings.steps <= MAX_STEPS,
         f"{key}.steps: {settings.steps} must be >= 1 and <= {MAX_STEPS}"),
        (settings.guidance_scale is None or settings.guidance_scale >= 0,
         f"{key}.guidance_scale: {settings.guidance_scale} must be >= 0"),
        (settings.gamma is None or 0.0 <= settings.gamma < 1.0, f"{key}.gamma: {settings.gamma} not in [0, 1)"),
    ]
    problems = [message for ok, message in checks if not ok] + scheduler_block_problems(f"{key}.scheduler",
                                                                                          settings.scheduler)
    return problems or schedule_problems(f"{key}.strength", or_default(settings.steps, run_steps), settings.strength)


def own_scheduler(pipe, key: str, block):
    """A partial-denoise stage's own scheduler, made by the pipeline's model family; None = the model's."""
    from magicme.families import get_family

    return get_family(pipe.family).make_scheduler(block, key) if block is not None else None


def or_default(value, default):
    """A stage setting left `null` falls back to the run's (or the sample's) value."""
    return default if value is None else value


for _module in BUILTIN_STAGES:
    importlib.import_module(_module)
