"""Denoising schedules, import-light (stages check their settings with it before anything loads).

A partial denoise (a refinement stage, video editing) is set by a `strength` and the `steps` it actually runs, as
ComfyUI's KSampler `denoise` works: a schedule of int(steps / strength) steps is built and its last `steps` run,
so strength chooses how much noise is added and `steps` how finely it is removed (Magic-Me's graph: 20 steps at
0.8 for faces = the last 20 of 25; 20 at 0.2 for tiles = the last 20 of 100).
"""

from dataclasses import dataclass, field
from typing import Any

# Timesteps the SD1.5-family diffusion was trained with: no schedule can be longer.
TRAIN_TIMESTEPS = 1000


@dataclass
class SchedulerConfig:
    name: str = "ddim"  # a preset (ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lightning, lcm) or a class name
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor settings over the preset's


def scheduler_block_problems(key: str, block) -> list[str]:
    """A stage's own `scheduler:` (null = the model's) must be `{name, kwargs}` like `model.scheduler`; which
    names and settings exist is checked by the model family before loading."""
    if block is None:
        return []
    if not (hasattr(block, "keys") and set(block.keys()) <= {"name", "kwargs"} and isinstance(block.get("name"), str)
            and hasattr(block.get("kwargs") or {}, "keys")):
        return [f"{key}: {block!r} is not a scheduler block; write {key}: euler, or "
                f"{{name: euler, kwargs: {{timestep_spacing: linspace}}}}, or null for the model's"]
    return []


def schedule_length(steps: int, strength: float) -> int:
    """Length of the schedule whose last `steps` steps a denoise at `strength` (0 < strength ≤ 1) runs."""
    return max(steps, int(steps / strength))


def schedule_problems(strength_key: str, steps: int, strength: float) -> list[str]:
    """A strength so low that the schedule would outgrow the training timesteps."""
    if 0 < strength <= 1 and steps >= 1 and schedule_length(steps, strength) > TRAIN_TIMESTEPS:
        return [f"{strength_key}: {strength} with {steps} steps needs a schedule of "
                f"{schedule_length(steps, strength)} steps, more than the model's {TRAIN_TIMESTEPS} timesteps; "
                "raise the strength or run fewer steps"]
    return []
