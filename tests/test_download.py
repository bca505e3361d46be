"""download_checkpoint.sh without a network: syntax, --list, the dry-run plan, argument errors, the fetch logic
(idempotence, sha256 check, fallbacks) driven through stand-in `hf` and `curl` commands on PATH, and giving up at
once when the hosts cannot be reached (the real curl against a closed port on localhost)."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "download_checkpoint.sh"
GROUPS = ["sd15", "base", "vae", "motion", "lora", "lightning", "lcm", "clipseg", "upscaler", "eval", "embeddings",
          "sdxl", "control"]
MM_V2_SHA = "69ed0f5fef82b110aca51bcab73b21104242bc65d6ab4b8b2a2a94d31cad1bf0"


def run(*args, models: Path, path: str | None = None, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELS_DIR": str(models), **env_vars}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def fake_bin(tmp_path: Path, with_hf: bool = True) -> str:
    """A PATH where `hf download REPO FILE --local-dir DIR` writes "weights of REPO/FILE" and `curl -o OUT URL` writes
    a zip-like torch file for raw.githubusercontent URLs (and fails for others), logging every call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    if with_hf:
        (bin_dir / "hf").write_text(f"""#!/bin/bash
echo "hf $*" >> {log}
repo=$2; file=$3; dir=$5
[ "$file" = model.safetensors ] && [ "$repo" = facebook/dino-vits16 ] && exit 1
mkdir -p "$dir/$(dirname "$file")"; echo "weights of $repo/$file" > "$dir/$file"
""")
    (bin_dir / "curl").write_text(f"""#!/bin/bash
echo "curl $*" >> {log}
out=""; url=""
while [ $# -gt 0 ]; do
  case $1 in -o) out=$2; shift;; -H|-C|--retry*|--*time*) shift;; -*) ;; *) url=$1;; esac; shift
done
case $url in
  *raw.githubusercontent.com*|*github.com/xinntao*) printf 'PK\\x03\\x04torch' > "$out";;
  *) echo "curl: (22) The requested URL returned error: 404" >&2; exit 22;;
esac
""")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    needed = ["bash", "sed", "head", "grep", "sha256sum", "cut", "mkdir", "mv", "rm", "dirname", "basename", "cat",
              "printf"]
    for name in needed:
        found = shutil.which(name)
        if found and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_list_names_every_group(tmp_path):
    result = run("--list", models=tmp_path)
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    assert listed == GROUPS


def test_unknown_group_and_argument_are_errors(tmp_path):
    result = run("--only", "motion,weights", models=tmp_path)
    assert result.returncode == 2 and "unknown group 'weights'" in result.stderr
    result = run("--frobnicate", models=tmp_path)
    assert result.returncode == 2 and "unknown argument" in result.stderr


def test_dry_run_plans_every_file_and_downloads_nothing(tmp_path):
    result = run("--dry-run", models=tmp_path / "models")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in [
        "stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors",
        "base/Realistic_Vision_V5.1_noVAE.safetensors <- https://huggingface.co/SG161222/Realistic_Vision_V5.1_noVAE/"
        "resolve/main/Realistic_Vision_V5.1_fp16-no-ema.safetensors",
        "vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
        f"motion_module/mm_sd_v15_v2.ckpt <- https://huggingface.co/guoyww/animatediff/resolve/main/mm_sd_v15_v2.ckpt "
        f"(sha256 {MM_V2_SHA})",
        "motion_module/v3_sd15_mm.ckpt", "motion_lora/v2_lora_ZoomIn.ckpt", "clipseg/{model.safetensors,pytorch_model.bin}",
        "upscaler/RealESRGAN_x2plus.pth", "upscaler/RealESRGAN_x4plus.pth", "eval/clip-vit-large-patch14/model.safetensors",
        "eval/dino-vits16/", "embeddings/altman.pt", "embeddings/zuck.pt",
        "motion_module/animatediff_lightning_4step_diffusers.safetensors <- https://huggingface.co/"
        "ByteDance/AnimateDiff-Lightning/resolve/main/animatediff_lightning_4step_diffusers.safetensors",
        "motion_module/AnimateLCM_sd15_t2v.ckpt <- https://huggingface.co/wangfuyun/AnimateLCM/resolve/main/"
        "AnimateLCM_sd15_t2v.ckpt",
        "lora/AnimateLCM_sd15_t2v_lora.safetensors <- https://huggingface.co/wangfuyun/AnimateLCM/resolve/main/"
        "AnimateLCM_sd15_t2v_lora.safetensors",
    ]:
        assert expected in out, expected
    assert "safety_checker" not in out and "ema" not in out.replace("no-ema", "")
    assert "stable-diffusion-xl" not in out and "mm_sdxl" not in out  # opt-in: --only sdxl
    assert "controlnet/" not in out and "sparsectrl" not in out  # opt-in: --only control
    assert not (tmp_path / "models").exists()


def test_sdxl_group_plans_the_sdxl_files(tmp_path):
    out = run("--dry-run", "--fp16", "--only", "sdxl", models=tmp_path).stdout
    for expected in [
        "stable-diffusion-xl-base-1.0/unet/diffusion_pytorch_model.safetensors <- https://huggingface.co/stabilityai/"
        "stable-diffusion-xl-base-1.0/resolve/main/unet/diffusion_pytorch_model.fp16.safetensors",
        "stable-diffusion-xl-base-1.0/text_encoder_2/model.safetensors", "stable-diffusion-xl-base-1.0/tokenizer_2/vocab.json",
        "vae/sdxl-vae-fp16-fix/diffusion_pytorch_model.safetensors <- https://huggingface.co/madebyollin/"
        "sdxl-vae-fp16-fix/resolve/main/diffusion_pytorch_model.safetensors",
        "motion_module/mm_sdxl_v10_beta.ckpt <- https://huggingface.co/guoyww/animatediff/resolve/main/"
        "mm_sdxl_v10_beta.ckpt",
    ]:
        assert expected in out, expected
    assert "stable-diffusion-xl-base-1.0/vae/" not in out and "stable-diffusion-v1-5" not in out


def test_control_group_plans_controlnets_sparsectrl_and_preprocessor_models(tmp_path):
    out = run("--dry-run", "--only", "control", models=tmp_path).stdout
    hf = "https://huggingface.co"
    for expected in [
        f"controlnet/openpose/diffusion_pytorch_model.safetensors <- {hf}/lllyasviel/control_v11p_sd15_openpose/"
        "resolve/main/diffusion_pytorch_model.safetensors",
        f"controlnet/depth/config.json <- {hf}/lllyasviel/control_v11f1p_sd15_depth/resolve/main/config.json",
        "controlnet/canny/diffusion_pytorch_model.safetensors", "controlnet/lineart/config.json",
        f"sparsectrl/rgb/diffusion_pytorch_model.safetensors <- {hf}/guoyww/animatediff-sparsectrl-rgb/",
        f"sparsectrl/scribble/config.json <- {hf}/guoyww/animatediff-sparsectrl-scribble/",
        f"motion_module/v3_sd15_mm.ckpt <- {hf}/guoyww/animatediff/resolve/main/v3_sd15_mm.ckpt",
        f"lora/v3_sd15_adapter.ckpt <- {hf}/guoyww/animatediff/resolve/main/v3_sd15_adapter.ckpt",
        f"control/depth-anything-v2-small/model.safetensors <- {hf}/depth-anything/Depth-Anything-V2-Small-hf/",
        "control/depth-anything-v2-small/preprocessor_config.json",
        f"control/vitpose-base-simple/model.safetensors <- {hf}/usyd-community/vitpose-base-simple/",
    ]:
        assert expected in out, expected
    fp16 = run("--dry-run", "--fp16", "--only", "control", models=tmp_path).stdout
    assert ("controlnet/canny/diffusion_pytorch_model.safetensors <- https://huggingface.co/lllyasviel/"
            "control_v11p_sd15_canny/resolve/main/diffusion_pytorch_model.fp16.safetensors") in fp16


def test_fp16_variant_is_saved_under_the_plain_name(tmp_path):
    out = run("--dry-run", "--fp16", "--only", "sd15", models=tmp_path).stdout
    assert ("stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors <- https://huggingface.co/"
            "stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/unet/diffusion_pytorch_model.fp16.safetensors") in out


def test_fetch_is_idempotent_and_falls_back(tmp_path):
    models = tmp_path / "models"
    path = fake_bin(tmp_path)
    result = run("--only", "vae,eval,embeddings", models=models, path=path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (models / "vae/sd-vae-ft-mse/config.json").read_text() == "weights of stabilityai/sd-vae-ft-mse/config.json\n"
    assert (models / "eval/dino-vits16/pytorch_model.bin").is_file()  # model.safetensors missing upstream
    assert (models / "embeddings/zuck.pt").read_bytes().startswith(b"PK")
    assert "embeddings  24/24  files  complete" in result.stdout  # the 24 published characters, trump.pt included
    assert (models / "embeddings/trump.pt").is_file()
    calls = (tmp_path / "calls.log").read_text()
    assert calls.count("--head") == 2  # one reachability probe per host: huggingface.co, raw.githubusercontent.com
    calls = calls.count("\n")
    again = run("--only", "vae,eval,embeddings", models=models, path=path)
    assert again.returncode == 0 and "  fetch " not in again.stdout
    assert (tmp_path / "calls.log").read_text().count("\n") == calls  # nothing fetched the second time


def test_sha256_mismatch_is_rejected_and_removed(tmp_path):
    models = tmp_path / "models"
    result = run("--only", "motion", models=models, path=fake_bin(tmp_path))
    assert result.returncode == 1
    assert "mm_sd_v15_v2.ckpt: sha256" in result.stderr and MM_V2_SHA in result.stderr
    assert not (models / "motion_module/mm_sd_v15_v2.ckpt").exists()
    assert (models / "motion_module/v3_sd15_mm.ckpt").is_file()  # no published hash: presence is the check


def test_curl_fallback_without_hf_cli(tmp_path):
    models = tmp_path / "models"
    result = run("--only", "upscaler,vae", models=models, path=fake_bin(tmp_path, with_hf=False))
    assert (models / "upscaler/RealESRGAN_x2plus.pth").is_file()
    calls = (tmp_path / "calls.log").read_text()
    assert "https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main/config.json" in calls
    assert result.returncode == 1  # the stand-in curl has no HF access
    downloads = [line for line in calls.splitlines() if "--head" not in line]
    assert all("--retry 2 " in line and "--connect-timeout 10 " in line and " -sS " in line for line in downloads)
    # quiet: one line per failed file, with curl's own reason, then the summary
    *failures, last = result.stderr.splitlines()
    assert len(failures) == 2 and last == "2 file(s) failed; run the same command again to resume"
    assert all("could not download" in line and line.endswith("(curl: (22) The requested URL returned error: 404)")
               for line in failures)


@pytest.mark.parametrize("content", [b"version https://git-lfs.github.com/spec/v1\n", b"<!DOCTYPE html>"])
def test_non_torch_embedding_is_not_kept(tmp_path, content):
    models = tmp_path / "models"
    path = fake_bin(tmp_path, with_hf=False)
    curl = Path(path) / "curl"
    curl.write_text(curl.read_text().replace("printf 'PK\\x03\\x04torch'", f"printf '{content.decode().strip()}'"))
    result = run("--only", "embeddings", models=models, path=path)
    assert result.returncode == 1 and "not a torch file" in result.stderr
    assert not any((models / "embeddings").glob("*.pt"))


def closed_port() -> int:
    """A localhost port nothing listens on: connecting is refused at once, as on a machine without a network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network_gives_up_at_once_with_one_message(tmp_path):
    real_curl = shutil.which("curl") or pytest.skip("curl is not installed")
    path = fake_bin(tmp_path, with_hf=False)
    log = tmp_path / "calls.log"
    (Path(path) / "curl").write_text(f'#!/bin/bash\necho "curl $*" >> {log}\nexec {real_curl} "$@"\n')
    models, endpoint = tmp_path / "models", f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    result = run("--only", "vae,eval", models=models, path=path, HF_ENDPOINT=endpoint)
    assert time.monotonic() - start < 5
    assert result.returncode == 1, result.stdout + result.stderr
    [message] = result.stderr.splitlines()
    assert message.startswith(f"error: cannot reach {endpoint} (no connection); ")
    assert "HF_ENDPOINT" in message and "run the same command again" in message
    assert len(log.read_text().splitlines()) == 1  # the probe, and no attempt at any file
    assert not models.exists()
    for args in (["--dry-run"], ["--list"]):  # plans need no network: no probe
        assert run(*args, models=models, path=path, HF_ENDPOINT=endpoint).returncode == 0
    assert len(log.read_text().splitlines()) == 1
