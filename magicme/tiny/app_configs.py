"""The web app's configs on the tiny bundle (64², 8 frames, 2 steps): for its tests and scripts/benchmark_app.py."""

import shutil
from pathlib import Path

import yaml


def write_app_configs(folder: Path, bundle: dict[str, Path]) -> tuple[Path, Path]:
    """`folder/sample.yaml` and `folder/train.yaml` over a bundle from `build_tiny_bundle`, with an embeddings folder
    of their own (training adds identities to it) and every output under `folder`."""
    folder = Path(folder)
    embeddings = folder / "embeddings"
    embeddings.mkdir(parents=True)
    shutil.copyfile(bundle["embedding"], embeddings / "tinyperson.pt")
    sampling = {
        "model": {"base": str(bundle["sd15"]), "base_config": None, "motion_module": str(bundle["motion_v2"]),
                  "embeddings_dir": str(embeddings), "scheduler": "ddim"},
        "prompts": ["a photo of {id}"], "negative_prompt": "blurry", "seeds": [42], "steps": 2, "frames": 8,
        "width": 64, "height": 64, "fps": 8, "output_dir": str(folder / "out"),
        # random CLIPSeg weights see "faces" everywhere; only big ones count, so the face stage refines one or two
        "face": {"clipseg_model": str(bundle["clipseg"]), "size": 32, "min_face": 30},
        "tiled": {"tile": 64, "padding": 8},
    }
    training = {
        "name": "unused", "images_dir": "unused", "class_word": "man", "init": "man", "resolution": 64,
        "batch_size": 2, "max_steps": 2, "checkpoint_every": 1, "mask_threshold": 0.0,
        "model": {"base": str(bundle["sd15"]), "clipseg": str(bundle["clipseg"])},
        "validation": {"every": 1, "model": {"base": str(bundle["sd15"]), "motion_module": str(bundle["motion_v2"]),
                                             "embeddings_dir": None},
                       "prompts": ["a photo of {id} walking"], "steps": 2, "frames": 4, "width": 64, "height": 64},
        "output_dir": str(folder / "train"), "mask_cache_dir": str(folder / "mask_cache"),
    }
    (folder / "sample.yaml").write_text(yaml.safe_dump(sampling))
    (folder / "train.yaml").write_text(yaml.safe_dump(training))
    return folder / "sample.yaml", folder / "train.yaml"
