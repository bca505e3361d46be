"""Speed knobs (magicme/speed.py): regional compilation traces every UNet block as one graph (no graph breaks, the
"original" GroupNorms and FreeU's hooks included) and changes no pixel; the attention kernel is chosen, checked
before loading, recorded, and used."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from magicme.errors import ConfigError
from magicme.sampling import run_sampling
from magicme.schema import SDPA_BACKEND_NAMES
from magicme.speed import KERNEL_CHOICES, SDPA_BACKENDS, attention_shape, fastest_sdpa, remembered_sdpa, sdpa_runs

RUN = {"prompts": ["a photo of <tinyperson> man"], "seeds": [3], "steps": 2, "guidance_scale": 7.5, "frames": 4,
       "width": 32, "height": 32, "fps": 4, "formats": ["gif"], "save_frames": True, "device": "cpu",
       "precision": "fp32", "freeu": {}}


def render(tmp_path: Path, tiny_bundle, name: str, **changes) -> Path:
    cfg = {**RUN, "output_dir": str(tmp_path / "out"), **changes, "model": {
        "base": str(tiny_bundle["sd15"]), "motion_module": str(tiny_bundle["motion_v1"]),
        "embeddings_dir": str(tiny_bundle["embedding"].parent), "scheduler": "ddim"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Path(run_sampling(path, [], progress=False))


def frames_and_record(run_dir: Path) -> tuple[np.ndarray, dict]:
    (record,) = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    folder = run_dir / record["files"]["frames"]
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]), record


def test_backend_names_are_the_schemas():
    assert ("auto", *SDPA_BACKENDS) == SDPA_BACKEND_NAMES


def test_attention_shape_is_sd15_first_block_self_attention():
    assert attention_shape(512, 512, 16, guidance=True) == (32, 8, 4096, 40)
    assert attention_shape(512, 768, 16, guidance=False) == (16, 8, 6144, 40)


def test_auto_picks_a_kernel_this_device_runs():
    choice = fastest_sdpa((2, 8, 64, 40), torch.device("cpu"), torch.float32)
    assert sdpa_runs(choice, torch.device("cpu"), torch.float32)


def test_auto_choice_is_remembered_next_to_the_models(tmp_path):
    """Measured once, then read back: a later run computes with the same kernel whatever its own timing says."""
    shape, cpu, file = (2, 8, 64, 40), torch.device("cpu"), tmp_path / KERNEL_CHOICES
    first = remembered_sdpa(shape, cpu, torch.float32, tmp_path)
    saved = json.loads(file.read_text())
    assert list(saved.values()) == [first]
    file.write_text(json.dumps({key: "math" for key in saved}))
    assert remembered_sdpa(shape, cpu, torch.float32, tmp_path) == "math"
    file.write_text("{not json")
    assert remembered_sdpa(shape, cpu, torch.float32, tmp_path) in SDPA_BACKENDS
    assert len(json.loads(file.read_text())) == 1


def test_compile_and_kernel_through_run_sampling(tmp_path, tiny_bundle):
    """`compile: true` reaches the UNet: dynamo captures one whole graph per block (fullgraph=True makes a graph
    break an error: v1's frame-pooled GroupNorms, which read the frame count, and FreeU's pre-hooks must trace),
    and with a backend that only traces the pixels are the same. The named kernel is recorded, and another kernel
    changes the arithmetic."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    plain, record = frames_and_record(render(tmp_path, tiny_bundle, "plain", sdpa_backend="math"))
    assert record["attention_kernel"] == "math"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    compiled, _ = frames_and_record(render(tmp_path, tiny_bundle, "compiled", sdpa_backend="math", compile=True,
                                           compile_backend="eager"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 5  # the tiny UNet's 2 down, 1 mid, 2 up blocks
    assert np.array_equal(compiled, plain)
    flash, record = frames_and_record(render(tmp_path, tiny_bundle, "flash", sdpa_backend="flash"))
    assert record["attention_kernel"] == "flash"
    assert not np.array_equal(flash, plain)
    auto = render(tmp_path, tiny_bundle, "auto")
    _, record = frames_and_record(auto)
    assert sdpa_runs(record["attention_kernel"], torch.device("cpu"), torch.float32)
    # config.yaml names the kernel auto chose, so re-running it computes with the same one
    assert yaml.safe_load((auto / "config.yaml").read_text())["sdpa_backend"] == record["attention_kernel"]


@pytest.mark.parametrize("changes, message", [
    ({"sdpa_backend": "efficient"}, "sdpa_backend: efficient has no kernel for float32 on cpu"),
    ({"sdpa_backend": "fast"}, "sdpa_backend: 'fast' is not one of auto, flash"),
    ({"compile": True, "compile_backend": "turbo"}, "compile_backend: 'turbo' is not a torch.compile backend"),
    ({"fp8": True}, "fp8: needs a CUDA GPU with fp8 tensor cores"),
])
def test_bad_speed_settings_fail_before_loading(tmp_path, tiny_bundle, changes, message):
    with pytest.raises(ConfigError, match=message):
        render(tmp_path, tiny_bundle, "bad", **changes)
    assert not (tmp_path / "out").exists()
