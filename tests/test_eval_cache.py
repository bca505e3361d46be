"""Incremental evaluation: scores kept in <run>/eval_cache.jsonl are reused for the same video, prompt, references,
models and settings, and recomputed when any of them changes; the report equals a cold evaluation."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from magicme.evaluation import metrics as metrics_module
from magicme.evaluation.cache import CACHE_NAME, EvalCache, context_key, entry_key, file_digest
from magicme.evaluation.evaluate import EvalSettings, evaluate
from magicme.tiny.eval_models import save_tiny_clip, save_tiny_dino
from magicme.video_io import write_frames, write_video
from tests.test_evaluation import record

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cache-models")
    return {"clip": str(save_tiny_clip(root / "clip")), "dino": str(save_tiny_dino(root / "dino")),
            "other_clip": str(save_tiny_clip(root / "other_clip", seed=1))}


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache-refs")
    from PIL import Image

    Image.fromarray(skdata.astronaut()[::8, ::8]).save(folder / "astronaut.png")
    return folder


def clip_of(seed: int, frames: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, 64, 64, 3), dtype=np.float32)


def add_video(run: Path, index: int, seed: int) -> None:
    """Write video `index` (random frames from `seed`) and list it in samples.jsonl, as a growing run does."""
    written = write_video(run / f"{index:04d}-a-photo-{seed}", clip_of(seed), 8)
    listing = run / "samples.jsonl"
    lines = listing.read_text() if listing.exists() else ""
    line = record(index, "t2v", written, 3, prompt=f"a photo of embedding:ann woman, take {index}", seed=seed)
    listing.write_text(lines + json.dumps({**line, "height": 64, "width": 64}) + "\n")


def scored(run: Path, references: Path, out: Path, **settings) -> dict:
    evaluate([run], references, out, EvalSettings(device="cpu", **settings), progress=False)
    return json.loads((out / "metrics.json").read_text())


def same_report(a: dict, b: dict) -> None:
    """Everything but the cache counts and the cache setting."""
    strip = [{k: v for k, v in d.items() if k != "cache"} | {"settings": {**d["settings"], "cache": None}}
             for d in (a, b)]
    assert strip[0] == strip[1]


def test_a_growing_run_scores_only_its_new_videos(tmp_path, models, references, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    add_video(run, 0, seed=0)
    add_video(run, 1, seed=1)
    use = {"clip": models["clip"], "dino": models["dino"]}
    first = scored(run, references, tmp_path / "e1", **use)
    assert first["cache"] == {"computed": 2, "cached": 0}
    assert len((run / CACHE_NAME).read_text().splitlines()) == 2

    add_video(run, 2, seed=2)  # the run grew (a resumed sampling run)
    grown = scored(run, references, tmp_path / "e2", **use)
    assert grown["cache"] == {"computed": 1, "cached": 2}
    cold = scored(run, references, tmp_path / "cold", cache=False, **use)
    assert cold["cache"] == {"computed": 3, "cached": 0}
    same_report(grown, cold)
    assert (tmp_path / "e2" / "report.html").read_text() == (tmp_path / "cold" / "report.html").read_text() \
        .replace("&quot;cache&quot;: false", "&quot;cache&quot;: true")

    # all cached: no model is even loaded
    monkeypatch.setattr(metrics_module, "ClipEncoder", lambda *a, **k: pytest.fail("loaded a model"))
    again = scored(run, references, tmp_path / "e3", **use)
    assert again["cache"] == {"computed": 0, "cached": 3} and again["references"]["faces_found"] == \
        cold["references"]["faces_found"]
    same_report(again, cold)


def test_a_changed_video_or_metric_model_is_scored_again(tmp_path, models, references):
    run = tmp_path / "run"
    run.mkdir()
    for index in range(2):
        add_video(run, index, seed=index)
    use = {"clip": models["clip"], "dino": models["dino"]}
    assert scored(run, references, tmp_path / "o", **use)["cache"]["computed"] == 2
    # resampled: same name, other pixels
    write_video(run / "0001-a-photo-1", clip_of(7), 8)
    assert scored(run, references, tmp_path / "o", **use)["cache"] == {"computed": 1, "cached": 1}
    # another CLIP checkpoint (same architecture, other weights)
    other = scored(run, references, tmp_path / "o", clip=models["other_clip"], dino=models["dino"])
    assert other["cache"] == {"computed": 2, "cached": 0}
    same_report(other, scored(run, references, tmp_path / "c", cache=False, clip=models["other_clip"],
                              dino=models["dino"]))
    # the same CLIP copied elsewhere is the same model
    shutil.copytree(models["clip"], tmp_path / "clip-copy")
    copy = scored(run, references, tmp_path / "o", clip=str(tmp_path / "clip-copy"), dino=models["dino"])
    assert copy["cache"] == {"computed": 0, "cached": 2}


def test_every_setting_that_changes_a_score_is_in_the_key(tmp_path, models, references):
    settings = EvalSettings(clip=models["clip"], dino=models["dino"])
    refs = sorted(references.iterdir())
    key = context_key(settings, "cpu", refs)
    assert key == context_key(replace(settings, cache=False), "cpu", refs)
    assert key == context_key(replace(settings, device="cuda:1"), "cpu", refs)  # the device type counts, resolved
    shutil.copytree(models["clip"], tmp_path / "clip")
    assert key == context_key(replace(settings, clip=str(tmp_path / "clip")), "cpu", refs)
    changed = [replace(settings, frames_per_video=2), replace(settings, faces=False),
               replace(settings, face_upsample=0), replace(settings, batch_size=4),
               replace(settings, contact_frames=3), replace(settings, clip=models["other_clip"]),
               replace(settings, dino=models["other_clip"])]
    keys = {context_key(s, "cpu", refs) for s in changed} | {context_key(settings, "cuda", refs)}
    (tmp_path / "more").mkdir()
    shutil.copy(refs[0], tmp_path / "more" / "other.png")
    keys.add(context_key(settings, "cpu", refs + [tmp_path / "more" / "other.png"]))
    (tmp_path / "clip" / "config.json").write_text((tmp_path / "clip" / "config.json").read_text() + " ")
    keys.add(context_key(replace(settings, clip=str(tmp_path / "clip")), "cpu", refs))
    assert len(keys) == len(changed) + 3 and key not in keys
    assert entry_key(key, "abc", "a photo") != entry_key(key, "abc", "a photo of") != entry_key(key, "abd", "a photo")


def test_no_cache_neither_reads_nor_writes(tmp_path, models, references):
    run = tmp_path / "run"
    run.mkdir()
    add_video(run, 0, seed=0)
    use = {"clip": models["clip"], "dino": models["dino"]}
    assert scored(run, references, tmp_path / "o", cache=False, **use)["cache"]["computed"] == 1
    assert not (run / CACHE_NAME).exists()


def test_a_torn_last_line_is_skipped_and_appending_goes_on(tmp_path):
    cache = EvalCache(tmp_path)
    cache.put({"key": "a", "value": 1})
    with (tmp_path / CACHE_NAME).open("a") as handle:
        handle.write('{"key": "b", "val')  # a write cut short by a kill
    again = EvalCache(tmp_path)
    assert set(again.entries) == {"a"}
    again.put({"key": "c", "value": 3})
    assert set(EvalCache(tmp_path).entries) == {"a", "c"}
    assert (tmp_path / CACHE_NAME).read_text().splitlines()[-1] == '{"key": "c", "value": 3}'


def test_frame_folder_digest_covers_names_and_pixels(tmp_path):
    folder = tmp_path / write_frames(tmp_path / "a", clip_of(0))
    digest = file_digest(folder)
    assert digest == file_digest(folder) and len(digest) == 64
    first = sorted(folder.iterdir())[0]
    first.write_bytes(first.read_bytes()[:-1] + b"x")
    assert file_digest(folder) != digest
