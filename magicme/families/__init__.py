"""Model families: which base architecture a `model:` block describes (`model.family`).

A family is one module with a flag and these functions:

    CONTROL: bool
        Whether the first stage may take `control:` ControlNets (magicme/control/) with this family.
    check(model, schedulers, schedules) -> None
        What needs the family's libraries to check before loading (the files were already read from their headers
        by magicme/inspector.py): the model's scheduler and the stages' own (`schedulers`, by config key), and the
        schedule lengths the stages ask of them (`schedules`, magicme/schema.py `denoise_schedules`).
        Raises `ConfigError` on the first problem.
    make_scheduler(scheduler, key) -> a diffusers scheduler
        A fresh scheduler from a `{name, kwargs}` block (a stage's own sampler).
    load(model, embeddings, *, device, precision, attention, vae_slicing, cpu_offload) -> MagicPipeline
        The loaded pipeline (magicme/pipeline.py): text→video and video→video with the 3D noise prior.

Adding a family = one module beside sd15.py (sdxl.py is the second) + one line in FAMILIES. Modules are imported only when
a run uses them, so reading a config stays fast.
"""

import importlib
from types import ModuleType

from magicme.errors import ConfigError

FAMILIES = {
    "sd15": "magicme.families.sd15",
    "sdxl": "magicme.families.sdxl",
}


def get_family(name: str) -> ModuleType:
    """The module of family `name`."""
    if name not in FAMILIES:
        raise ConfigError(f"model.family: {name!r} is not one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])
