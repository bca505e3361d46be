"""With the files present, loading, sampling and training make no network call: every socket connection and DNS
lookup fails (and is recorded) while the real-download layout is used — a single-file noVAE base with its
base_config folder, a separate VAE, an original-format motion module + MotionLoRA, an identity embedding, CLIPSeg."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from skimage import data as skdata

import sample
import train
from magicme.embeddings import find_embeddings
from magicme.families.sd15 import load, load_base
from magicme.schema import model_config
from magicme.tiny.ldm import save_ldm_checkpoint


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to connect or resolve a host name raises, and is recorded (a library that swallowed the error
    and carried on would still be caught)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], f"network calls attempted: {attempts[:3]}"


@pytest.fixture(scope="module")
def real_layout(tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """The tiny models arranged as download_checkpoint.sh arranges the real ones."""
    base = load_base(str(tiny_bundle["sd15"]), None, torch.float32)
    root = tmp_path_factory.mktemp("offline")
    single = save_ldm_checkpoint(base.unet, base.vae, base.text_encoder, root / "base" / "tiny_rv.safetensors")
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(skdata.astronaut()).resize((96, 96)).save(photos / "01.png")
    return {"base": single, "photos": photos, "root": root}


def model_block(tiny_bundle, real_layout) -> dict:
    return {"base": str(real_layout["base"]), "base_config": str(tiny_bundle["sd15"]), "vae": str(tiny_bundle["sd15"]),
            "motion_module": str(tiny_bundle["motion_v2"]),
            "motion_loras": [{"path": str(tiny_bundle["motion_lora"]), "strength": 0.6}],
            "embeddings_dir": str(tiny_bundle["embedding"].parent)}


def test_load_pipeline_offline(tiny_bundle, real_layout, no_network):
    model = model_config(model_block(tiny_bundle, real_layout))
    pipe = load(model, find_embeddings(model.embeddings_dir), device="cpu")
    video = pipe.text_to_video("a photo of <tinyperson> man", "", torch.Generator().manual_seed(0), gamma=0.1,
                               frames=2, height=32, width=32, steps=1, guidance_scale=7.5, progress=False)
    assert video.shape == (2, 32, 32, 3)


def test_sample_and_train_offline(tiny_bundle, real_layout, no_network, tmp_path):
    model = model_block(tiny_bundle, real_layout)
    sample_cfg = tmp_path / "sample.yaml"
    sample_cfg.write_text(yaml.safe_dump({
        "model": model, "prompts": ["a photo of embedding:tinyperson man"], "steps": 1, "frames": 2, "width": 32,
        "height": 32, "stages": ["t2v", "face"], "face": {"clipseg_model": str(tiny_bundle["clipseg"]), "size": 32},
        "output_dir": str(tmp_path / "samples")}))
    assert sample.main(["--config", str(sample_cfg), "--quiet"]) == 0
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text(yaml.safe_dump({
        "name": "offline", "images_dir": str(real_layout["photos"]), "init": "man", "resolution": 64,
        "batch_size": 1, "max_steps": 2, "checkpoint_every": 2, "mask_threshold": 0.0,
        "model": {"base": str(real_layout["base"]), "base_config": str(tiny_bundle["sd15"]),
                  "clipseg": str(tiny_bundle["clipseg"])},
        "validation": {"every": 2, "model": {**model, "embeddings_dir": None}, "prompts": ["a photo of {id}"],
                       "steps": 1, "frames": 2, "width": 32, "height": 32},
        "output_dir": str(tmp_path / "runs"), "mask_cache_dir": str(tmp_path / "cache"),
        "copy_to_embeddings_dir": None}))
    assert train.main(["--config", str(train_cfg), "--quiet"]) == 0
    assert list((tmp_path / "runs").glob("*/offline.pt"))


def test_gpu_benchmark_refuses_a_cpu_at_once():
    """The full-size benchmark needs CUDA: without it, it stops before building anything, saying what to run."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_gpu.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "needs a CUDA GPU" in result.stderr and "benchmark_sampling.py" in result.stderr
    assert "Traceback" not in result.stderr
