"""Model families: which base architecture a `model:` block describes (`model.family`).

A family is one module with two functions:

    check(model) -> magicme.inspector.ModelInfo
        Everything knowable before loading, from file headers only: do the files exist, are they the formats and
        versions this family runs, do they fit each other. Raises `ConfigError` on the first problem.
    load(model, embeddings, *, device, precision, attention, vae_slicing, cpu_offload) -> MagicPipeline
        The loaded pipeline (magicme/pipeline.py): text→video and video→video with the 3D noise prior.

Adding a family (e.g. SD-XL) = one module beside sd15.py + one line in FAMILIES. Modules are imported only when
a run uses them, so reading a config stays fast.
"""

import importlib
from types import ModuleType

from magicme.errors import ConfigError

FAMILIES = {
    "sd15": "magicme.families.sd15",
}


def get_family(name: str) -> ModuleType:
    """The module of family `name`."""
    if name not in FAMILIES:
        raise ConfigError(f"model.family: {name!r} is not one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])
