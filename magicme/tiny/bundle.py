"""The whole tiny random-weight bundle (tests, the no-weights demo, scripts/make_tiny_models.py): the SD1.5 family's
models (magicme/tiny/sd.py) and then the SD-XL family's (magicme/tiny/sdxl.py), from one seed.
"""

from pathlib import Path

import torch

from magicme.embeddings import save_embedding
from magicme.tiny.clipseg import save_tiny_clipseg
from magicme.tiny.controlnet import save_control_models
from magicme.tiny.motion import save_original_motion_lora, save_original_motion_module
from magicme.tiny.sd import MOTION_VERSIONS, TEXT_WIDTH, save_fewstep_models, save_tiny_sd, tiny_motion_adapter
from magicme.tiny.sdxl import save_sdxl_models


def build_tiny_bundle(out: Path | str, seed: int = 0) -> dict[str, Path]:
    """Build every tiny model under `out` (SD folder, motion modules v1/v2/v3, a MotionLoRA, CLIPSeg, two ID
    embeddings, the few-step modules and LoRA, a ControlNet and two clips, and the SD-XL family's:
    magicme/tiny/sdxl.py); the same seed always gives the same weights."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "RANDOM_WEIGHTS.txt").write_text(
        "Tiny random-weight models built by scripts/make_tiny_models.py for tests; their output is noise.\n"
    )
    torch.manual_seed(seed)
    paths = {"sd15": save_tiny_sd(out / "sd15")}
    for version in MOTION_VERSIONS:
        path = out / "motion_module" / f"mm_tiny_{version}.ckpt"
        save_original_motion_module(tiny_motion_adapter(version), path)
        paths[f"motion_{version}"] = path
    paths["motion_lora"] = save_original_motion_lora(
        tiny_motion_adapter("v2"), out / "motion_lora" / "v2_lora_tiny.ckpt", rank=4
    )
    paths["clipseg"] = save_tiny_clipseg(out / "clipseg", out / "sd15" / "tokenizer", seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    paths["embedding"] = out / "embeddings" / "tinyperson.pt"
    save_embedding(paths["embedding"], torch.randn(4, TEXT_WIDTH, generator=generator) * 0.02, "tinyperson",
                   class_word="man")
    second = torch.Generator().manual_seed(seed + 7)  # its own generator: the draws above stay as they were
    paths["embedding_woman"] = out / "embeddings" / "tinywoman.pt"
    save_embedding(paths["embedding_woman"], torch.randn(4, TEXT_WIDTH, generator=second) * 0.02, "tinywoman",
                   class_word="woman")
    paths.update(save_fewstep_models(out, seed))
    paths.update(save_control_models(out, seed))
    paths.update(save_sdxl_models(out, seed))  # last, so the SD1.5 files' random draws stay as they were
    return paths
