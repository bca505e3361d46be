"""The second robustness round (issue 23): nothing a user owns is lost, nothing hangs, every model file is inspected
before loading, every bad input is one `error:` line. Each test names the case it covers: `I<n>` the issue's own
cases (numbered as there), `O<n>` further cases of the same classes. All on the tiny bundle, on CPU."""

import errno
import importlib.util
import os
import pickle
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import sample
import train
from magicme.checkpoint_io import load_checkpoint
from magicme.errors import ConfigError
from magicme.rundir import remove_stale_temp_files
from magicme.video_io import atomic_path
from magicme.webapp import forms
from tests.test_resume import files_of
from tests.test_sampling import write_config

REPO = Path(__file__).resolve().parents[1]
LOL = "\n".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)] + ["prompts: *a7", ""])


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_line(capsys) -> str:
    """The one line a CLI prints for a ConfigError: nothing else on stderr, no traceback, no warning."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


def error_after_loading(capsys) -> str:
    """The error line of a failure after the models loaded: only the loaders' progress bars may come before it."""
    err = capsys.readouterr().err
    *before, last = err.strip().split("\n")
    assert last.startswith("error: ") and all("Loading weights" in line for line in before), err
    return last


class Evil:
    """Unpickling it would run code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("magicme.families.sd15.load", refuse)


@pytest.fixture
def config(tmp_path, tiny_bundle):
    return write_config(tmp_path, tiny_bundle, frames=8, width=64, height=64, formats=["mp4", "gif"],
                        **{"model.motion_loras": []})


def run(config, *extra) -> int:
    return sample.main(["--config", str(config), "--quiet", *extra])


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# -- data lost: run folders ----------------------------------------------------------------------------------------

DOT_FILES = {".env.local": "SECRET=1", ".bashrc.bak": "alias ll='ls -l'", ".gitignore": "*.mp4",
             ".cache/x.bin": "cache", ".config.yaml.swp": "swap", ".notes.abcdefgh.txt": "notes",
             ".video.abcdefgh.mp4": "a hidden video of mine"}


def write_dot_files(folder: Path) -> dict[str, str]:
    for name, text in DOT_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return DOT_FILES


def contents(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}


def test_I1_a_folder_of_hidden_files_is_refused_and_kept(tmp_path, config, capsys, no_load):
    folder = tmp_path / "home"
    folder.mkdir()
    files = write_dot_files(folder)
    assert run(config, "--run-dir", str(folder)) == 2
    assert "but no config.yaml, so it is no run folder of sample.py" in error_line(capsys)
    assert contents(folder) == files


def test_I1_cleanup_removes_only_atomic_path_temp_files(tmp_path):
    files = write_dot_files(tmp_path)
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "sub" / "video.mp4") as tmp:
        tmp.write_bytes(b"half")
        os.link(tmp, tmp_path / "kept-aside")
        raise RuntimeError
    os.rename(tmp_path / "kept-aside", tmp)  # what a killed write leaves
    assert remove_stale_temp_files(tmp_path) == 1
    assert contents(tmp_path) == files


def test_O21_a_left_temp_file_alone_is_the_runs_own(tmp_path, config, capsys, monkeypatch):
    """A folder holding only what an interrupted run of ours left (its lock, a temp file) is continued."""
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError), atomic_path(folder / "config.yaml") as tmp:
        os.link(tmp, folder / "kept-aside")
        raise RuntimeError
    os.rename(folder / "kept-aside", tmp)
    assert run(config, "--run-dir", str(folder)) == 0
    assert (folder / "config.yaml").is_file() and not tmp.exists()


def test_O22_a_symlink_named_like_a_temp_file_is_not_followed(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".x.abcdefgh.magicme-tmp.txt").symlink_to(mine)
    remove_stale_temp_files(tmp_path / "run")
    assert mine.read_text() == "keep"


# -- hangs: bounded config reading -----------------------------------------------------------------------------------

CLIS = {
    "sample.py": lambda config, extra: sample.main(["--config", str(config), "--quiet", *extra]),
    "train.py": lambda config, extra: train.main(["--config", str(config), "--quiet", *extra]),
    "check_models.py": lambda config, extra: script("check_models").main(["--config", str(config), *extra]),
    "evaluate.py": lambda config, extra: script("evaluate").main(
        ["--config", str(config), "--samples", "nowhere", "--references", "nowhere", "--quiet", *extra]),
}
BOUNDS = [
    ("I2 nested aliases", LOL, "values once its aliases (*name) are expanded"),
    ("O1 self-referring alias", "a: &a [1, *a]\n", "refers to the list or mapping that contains it"),
    ("O2 a 2 MB file", "# " + "x" * 2_000_000 + "\n", "more than a config's 1,000,000"),
    ("O3 40 levels deep", "a: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32 levels deep"),
    ("O5 10,000 levels deep", "a: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested more than 32 levels deep"),
]


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("case, text, message", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_config_reading_is_bounded_for_every_cli(tmp_path, capsys, cli, case, text, message):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    start = time.perf_counter()
    assert CLIS[cli](path, []) == 2
    assert time.perf_counter() - start < 1.0
    assert message in error_line(capsys)


def test_I2_the_page_reads_its_config_bounded(tmp_path, app_configs):
    from magicme.webapp.ui import App

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(LOL)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="values once its aliases"):
        App(str(bomb), str(app_configs[1]))
    assert time.perf_counter() - start < 1.0


def test_O4_an_alias_bomb_in_an_override_is_refused(config, capsys):
    bomb = "prompts=[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], " \
           "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"
    start = time.perf_counter()
    assert run(config, bomb) == 2
    assert time.perf_counter() - start < 1.0
    line = error_line(capsys)
    assert "prompts: the override's value is" in line and "values once its aliases (*name) are expanded" in line


# -- non-finite numbers and upper bounds ---------------------------------------------------------------------------

BAD_VALUES = [
    ("I5 freeu nan", ["freeu={b2: nan}"], "freeu.b2: nan is not a finite number"),
    ("I5 guidance inf", ["guidance_scale=inf"], "guidance_scale: inf is not a finite number"),
    ("I5 guidance 1e309", ["guidance_scale=1e309"], "guidance_scale: inf is not a finite number"),
    ("I6 width 10^9", ["width=1000000000", "height=1000000000"], "width: 1000000000 must be a positive multiple of 8, "
                                                                 "at most 4096"),
    ("O6 a prompt's gamma nan", ["prompts=[{prompt: a cat, gamma: .nan}]"], "prompts[0].gamma: nan is not a finite"),
    ("O7 control scale inf", ["control=[{model: NET, video: CLIP, scale: .inf}]"], "control[0].scale: inf is not a"),
    ("O8 scheduler kwarg nan", ["model.scheduler={name: ddim, kwargs: {clip_sample_range: .nan}}"],
     "model.scheduler.kwargs.clip_sample_range: nan is not a finite number"),
    ("O10 frames 10^5 in windows", ["frames=100000", "context={length: 16, overlap: 4}"],
     "frames: 100000 must be at least 1 and at most 1024"),
    ("O11 steps 10^5", ["steps=100000"], "steps: 100000 must be at least 1 and at most 1000"),
    ("O12 face.size 10^5", ["stages=[t2v,face]", "face.detector=dlib", "face.size=100000"],
     "face.size: 100000 is more than 4096 px"),
    ("O13 tiled.tile 10^5", ["stages=[t2v,tiled]", "tiled.tile=100000"], "tiled.tile: 100000 is more than 4096 px"),
    ("O15 fps 10^5", ["fps=100000"], "fps: 100000 must be at least 1 and at most 240"),
    ("O37 face.steps 10^5", ["stages=[t2v,face]", "face.detector=dlib", "face.steps=100000"],
     "face.steps: 100000 must be >= 1 and <= 1000"),
    ("O38 context.length 10^5", ["context={length: 100000, overlap: 4}"], "context.length: 100000 must be at least 1"),
    ("I7 class_words a list", ["identities=[tinyperson]", "prompts=['a photo of {id}']",
     "class_words={tinyperson: [1, 2]}"],
     "class_words.tinyperson: [1, 2] is not a class word"),
    ("O23 class_words a mapping", ["identities=[tinyperson]", "prompts=['a photo of {id}']",
     "class_words={tinyperson: {a: 1}}"],
     "class_words.tinyperson: {'a': 1} is not a class word"),
]


@pytest.mark.parametrize("case, overrides, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_one_line_before_loading(tmp_path, tiny_bundle, config, capsys, no_load, case, overrides,
                                                message):
    paths = {"NET": str(tiny_bundle["controlnet"]), "CLIP": str(tiny_bundle["control_clip"])}
    for name, path in paths.items():
        overrides = [o.replace(name, path) for o in overrides]
    assert run(config, *overrides) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    ({"lr": float("nan")}, "lr: nan is not a finite number"),  # O9
    ({"resolution": 100_000}, "resolution: 100000 must be a multiple of 8, at least 64 and at most 4096"),  # O14
    ({"max_steps": 10**9}, "max_steps: 1000000000 must be >= 1 and <= 1,000,000"),  # O39
], ids=["O9 lr nan", "O14 resolution", "O39 max_steps"])
def test_training_values_are_finite_and_bounded(tmp_path, tiny_bundle, capsys, change, message):
    from tests.test_training import write_train_config

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64)).save(photos / "a.png")
    assert train.main(["--config", str(write_train_config(tmp_path, tiny_bundle, photos, **change)), "--quiet"]) == 2
    assert message in error_line(capsys)


# -- every model file inspected before loading ---------------------------------------------------------------------

def truncated(path: Path, size: int) -> Path:
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def broken_net(tmp_path: Path, source: Path, how: str) -> Path:
    """A copy of a model folder whose weights are truncated, empty, a code-carrying pickle or random bytes."""
    folder = copy_folder(source, tmp_path / f"net-{how.replace(' ', '-')}")
    (weights,) = [p for p in folder.iterdir() if p.suffix == ".safetensors"]
    if how == "truncated":
        truncated(weights, weights.stat().st_size // 2)
    elif how == "empty":
        truncated(weights, 0)
    else:
        weights.unlink()
        bin_file = folder / weights.with_suffix(".bin").name
        if how == "code":
            with open(bin_file, "wb") as f:
                pickle.dump({"w": Evil(tmp_path / "PWNED")}, f)
        else:
            bin_file.write_bytes(np.random.default_rng(0).bytes(100))
    return folder


CONTROL_CASES = [
    ("I3 truncated ControlNet", "truncated", "truncated safetensors file"),
    ("I3 zero-byte ControlNet", "empty", "truncated safetensors file (0 bytes, no header)"),
    ("I3 pickle ControlNet", "code", "objects other than tensors, which could run code"),
    ("O20 random-bytes .bin ControlNet", "random", "corrupt or not a checkpoint"),
]


@pytest.mark.parametrize("case, how, message", CONTROL_CASES, ids=[c[0] for c in CONTROL_CASES])
def test_controlnet_files_are_inspected_before_loading(tmp_path, tiny_bundle, config, capsys, no_load, case, how,
                                                       message):
    net = broken_net(tmp_path, tiny_bundle["controlnet"], how)
    assert run(config, f"control=[{{model: {net}, video: {tiny_bundle['control_clip']}}}]") == 2
    line = error_line(capsys)
    assert line.startswith(f"error: control[0].model: {net}/") and message in line
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


def test_O16_a_truncated_single_file_controlnet(tmp_path, tiny_bundle, config, capsys, no_load):
    net = truncated(Path(shutil.copy(tiny_bundle["controlnet_file"], tmp_path / "cn.safetensors")), 5000)
    assert run(config, f"control=[{{model: {net}, config: {tiny_bundle['controlnet']}, "
                       f"video: {tiny_bundle['control_clip']}}}]") == 2
    assert f"control[0].model: {net}: truncated safetensors file" in error_line(capsys)


def test_O17_a_truncated_depth_preprocessor(tmp_path, tiny_bundle, config, capsys, no_load):
    depth = broken_net(tmp_path, tiny_bundle["depth_model"], "truncated")
    assert run(config, f"input_video={tiny_bundle['input_clip']}", f"control=[{{model: {tiny_bundle['controlnet']}, "
                       f"type: depth, from: input_video, preprocessor: {depth}}}]") == 2
    assert f"control[0].preprocessor: {depth}/" in error_line(capsys)


def test_I3_a_truncated_sparsectrl_net(tmp_path, tiny_bundle, config, capsys, no_load):
    from magicme.tiny.sparsectrl import save_png, save_tiny_sparsectrl

    net = save_tiny_sparsectrl(tmp_path / "sparse", tiny_bundle["sd15"] / "unet", "rgb")
    broken = broken_net(tmp_path, net, "truncated")
    key = save_png(tmp_path / "key.png", np.zeros((64, 64, 3), np.float32))
    assert run(config, f"model.motion_module={tiny_bundle['motion_v3']}",
               f"sparse_control={{model: {broken}, frames: {{0: {key}}}, type: rgb}}") == 2
    assert f"sparse_control.model: {broken}/" in error_line(capsys)


def test_O18_a_zero_byte_face_clipseg(tmp_path, tiny_bundle, config, capsys, no_load):
    clipseg = broken_net(tmp_path, tiny_bundle["clipseg"], "empty")
    assert run(config, "stages=[t2v,face]", f"face.clipseg_model={clipseg}") == 2
    assert f"face.clipseg_model: {clipseg}/" in error_line(capsys)


def test_I3_check_models_lists_and_fails_a_truncated_controlnet(tmp_path, tiny_bundle, config, capsys):
    net = broken_net(tmp_path, tiny_bundle["controlnet"], "truncated")
    good = f"{{model: {tiny_bundle['controlnet']}, video: {tiny_bundle['control_clip']}}}"
    bad = f"{{model: {net}, video: {tiny_bundle['control_clip']}}}"
    assert script("check_models").main(["--config", str(config), f"control=[{good}, {bad}]"]) == 1
    out, err = capsys.readouterr()
    assert "all model files present" not in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("control[")}
    assert " ok " in rows["control[0].model"] and "ControlNet" in rows["control[0].model"]
    assert "FAIL" in rows["control[1].model"] and "truncated safetensors file" in rows["control[1].model"]
    assert "first: control[1].model" in err


def test_I3_check_models_lists_sparse_control(tmp_path, tiny_bundle, config, capsys):
    from magicme.tiny.sparsectrl import save_png, save_tiny_sparsectrl

    net = save_tiny_sparsectrl(tmp_path / "sparse", tiny_bundle["sd15"] / "unet", "rgb")
    key = save_png(tmp_path / "key.png", np.zeros((64, 64, 3), np.float32))
    script("check_models").main(["--config", str(config), f"model.motion_module={tiny_bundle['motion_v3']}",
                                 f"sparse_control={{model: {net}, frames: {{0: {key}}}, type: rgb}}"])
    assert any(line.startswith("sparse_control.model") and " ok " in line
               for line in capsys.readouterr().out.splitlines())


def test_I4_training_clipseg_with_a_pickle_is_refused_before_loading(tmp_path, tiny_bundle, capsys):
    from tests.test_training import write_train_config

    clipseg = broken_net(tmp_path, tiny_bundle["clipseg"], "code")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64)).save(photos / "a.png")
    path = write_train_config(tmp_path, tiny_bundle, photos, **{"model.clipseg": str(clipseg)})
    assert train.main(["--config", str(path), "--quiet"]) == 2
    assert f"model.clipseg: {clipseg}/" in error_line(capsys) and not (tmp_path / "PWNED").exists()


# -- clean messages ------------------------------------------------------------------------------------------------

def test_I10_a_malicious_pickle_is_refused_without_a_warning(tmp_path, config, capsys, no_load):
    lora = tmp_path / "evil_lora.ckpt"
    with open(lora, "wb") as f:
        pickle.dump({"w": Evil(tmp_path / "PWNED")}, f, protocol=4)  # protocol 4: torch warns about it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(config, f"model.motion_loras=[{{path: {lora}}}]") == 2
    assert not [w for w in caught if "pickle" in str(w.message)]
    assert "objects other than tensors, which could run code" in error_line(capsys)
    assert not (tmp_path / "PWNED").exists()


def test_I10_random_bytes_are_corrupt_not_code(tmp_path, config, capsys, no_load):
    lora = tmp_path / "garbage_lora.ckpt"
    lora.write_bytes(np.random.default_rng(1).bytes(100))
    assert run(config, f"model.motion_loras=[{{path: {lora}}}]") == 2
    line = error_line(capsys)
    assert "corrupt or not a checkpoint" in line and "could run code" not in line


@pytest.mark.parametrize("content, message", [
    (b"", "corrupt or not a checkpoint (EOFError)"),  # O24
    (b"hello world\n", "corrupt or not a checkpoint"),  # O25
], ids=["O24 empty", "O25 text"])
def test_empty_and_text_checkpoints_are_corrupt(tmp_path, content, message):
    (tmp_path / "x.ckpt").write_bytes(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(tmp_path / "x.ckpt")


def test_O26_a_code_pickle_in_torchs_zip_format_is_code(tmp_path):
    torch.save({"w": Evil(tmp_path / "PWNED")}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


# -- the prompt length before loading ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["prompts=[LONG]"], "prompts: the prompt 'word word"),  # I6
    (["negative_prompt=LONG"], "prompts: the negative_prompt 'word word"),  # O27
    (["prompts=[{prompt: {0: a cat, 4: LONG}}]"], "prompts: the prompt 'word word"),  # O28 a travel keyframe
], ids=["I6 long prompt", "O27 long negative prompt", "O28 long keyframe"])
def test_a_long_prompt_is_refused_before_loading(config, capsys, no_load, overrides, message):
    long = " ".join(["word"] * 700)
    assert run(config, *[o.replace("LONG", long) for o in overrides]) == 2
    line = error_line(capsys)
    assert message in line and "tokens is more than" in line


def test_the_early_count_is_the_loaded_pipelines(tiny_bundle, tiny_pipeline, tmp_path):
    """The tokenizer-only count (identities expanded) equals the loaded encoder's, token for token."""
    from magicme.prompt_length import check_prompt_lengths, count_prompt_tokens
    from magicme.schema import check_sample_config, load_sample_config

    path = write_config(tmp_path, tiny_bundle, prompts=["a photo of embedding:tinyperson man, (smiling:1.2) " * 5,
                                                        {"prompt": "<tinyperson> running", "negative_prompt": "ugly"}])
    cfg = load_sample_config(path)
    samples, embeddings = check_sample_config(cfg)
    weighting, tiny_pipeline.prompts.weighting = tiny_pipeline.prompts.weighting, cfg.prompt_weighting
    try:
        early = check_prompt_lengths(cfg, samples, embeddings)
        assert early == count_prompt_tokens(tiny_pipeline.prompts, samples)
        assert early["<tinyperson> running"] == 4 + tiny_pipeline.prompts.count("running")
    finally:
        tiny_pipeline.prompts.weighting = weighting


# -- writing outputs -----------------------------------------------------------------------------------------------

def test_I8_disk_full_is_one_line_and_the_rerun_renders_the_sample(tmp_path, config, capsys, monkeypatch):
    import magicme.sampling as sampling

    folder = tmp_path / "run"
    real = sampling.write_video

    def full_at_second_gif(stem, video, fps, formats):
        written = real(stem, video, fps, ("mp4",))
        if len(list(folder.glob("*.gif"))) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return {**written, **real(stem, video, fps, ("gif",))}

    monkeypatch.setattr(sampling, "write_video", full_at_second_gif)
    assert run(config, "--run-dir", str(folder)) == 2
    line = error_after_loading(capsys)
    assert line.startswith(f"error: {folder}: cannot write the files of ") and "No space left on device" in line
    assert len(list(folder.glob("*.mp4"))) == len(list(folder.glob("*.gif"))) == 1  # the half sample removed
    monkeypatch.setattr(sampling, "write_video", real)
    assert run(config, "--run-dir", str(folder)) == 0
    assert run(config, "--run-dir", str(tmp_path / "whole")) == 0
    assert files_of(folder) == files_of(tmp_path / "whole")


def test_O29_no_permission_for_the_run_folder_is_one_line(tmp_path, config, capsys, monkeypatch):
    import magicme.resume as resume

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(resume.OmegaConf, "save", denied)
    assert run(config, "--run-dir", str(tmp_path / "run")) == 2
    assert f"{tmp_path / 'run'}: cannot write the run's files (Permission denied)" in error_after_loading(capsys)


def test_O30_frames_folders_are_removed_with_their_half_sample(tmp_path, config, capsys, monkeypatch):
    import magicme.sampling as sampling

    def full(folder, video):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "frame-0000.png").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sampling, "write_frames", full)
    assert run(config, "--run-dir", str(tmp_path / "run"), "save_frames=true") == 2
    assert "cannot write the files of" in error_after_loading(capsys)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "manifest", "samples.jsonl"]


# -- the page ------------------------------------------------------------------------------------------------------

@pytest.fixture
def app_configs(tmp_path, tiny_bundle):
    from magicme.tiny.app_configs import write_app_configs

    return write_app_configs(tmp_path / "app", tiny_bundle)


def photos_in(folder: Path, count: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        paths.append(str(folder / f"p{i}.png"))
    return paths


def test_I9_a_300_mb_upload_is_refused_and_the_page_has_a_limit(tmp_path, app_configs, monkeypatch):
    import app as app_module
    import gradio as gr

    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(300 * 2**20)  # sparse: no disk used
    with pytest.raises(ConfigError, match="photos: big.png is 300 MB, more than 50 MB"):
        forms.check_photos([str(big)])
    clip = tmp_path / "big.mp4"
    os.link(big, clip)
    from tests.test_app import form

    with pytest.raises(ConfigError, match="video: big.mp4 is 300 MB"):  # O31
        forms.edit_config(app_configs[0], form(), str(clip), 0.5)
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    assert app_module.main(["--config", str(app_configs[0]), "--train-config", str(app_configs[1])]) == 0
    assert launched["max_file_size"] == "50mb"


def test_I9_show_masks_with_a_fake_png_stores_nothing_and_keeps_earlier_photos(tmp_path, app_configs):
    from magicme.webapp.ui import App

    app = App(str(app_configs[0]), str(app_configs[1]))
    folder = app.photo_folder("ann")
    forms.store_photos([Path(p) for p in photos_in(tmp_path / "first", 3)], folder)
    before = contents_bytes(folder)
    fake = tmp_path / "upload" / "notes.png"
    fake.parent.mkdir()
    fake.write_text("not an image")
    status, gallery = app.masks(photos_in(tmp_path / "upload", 2) + [str(fake)], "ann", "woman", 2)
    assert status.startswith("error: photos: notes.png: cannot read this photo") and gallery is None
    assert contents_bytes(folder) == before


def test_O32_a_zero_byte_photo_stores_nothing(tmp_path, app_configs):
    from magicme.webapp.ui import App

    app = App(str(app_configs[0]), str(app_configs[1]))
    empty = tmp_path / "up" / "empty.jpg"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    status, _ = app.masks([str(empty)], "bob", "man", 2)
    assert "photos: empty.jpg: cannot read this photo" in status and not app.photo_folder("bob").exists()


def test_O33_a_new_upload_moves_the_earlier_one_aside(tmp_path):
    folder = tmp_path / "photos" / "ann"
    forms.store_photos([Path(p) for p in photos_in(tmp_path / "first", 2)], folder)
    before = contents_bytes(folder)
    forms.store_photos([Path(p) for p in photos_in(tmp_path / "first", 2)], folder)  # the same upload again
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ann"]
    forms.store_photos([Path(p) for p in photos_in(tmp_path / "second", 3, seed=1)], folder)
    (aside,) = folder.parent.glob("ann.old-*")
    assert contents_bytes(aside) == before and len(list(folder.iterdir())) == 3


def contents_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_O34_an_evaluation_model_with_a_truncated_weights_file(tmp_path, tiny_bundle):
    from magicme.evaluation.runs import check_model_path

    clip = broken_net(tmp_path, tiny_bundle["clipseg"], "truncated")  # any transformers folder: the header is checked
    with pytest.raises(ConfigError, match=f"^clip: {clip}/model.safetensors: truncated safetensors file"):
        check_model_path("clip", str(clip))


@pytest.mark.parametrize("changes, message", [
    (dict(guidance_scale=1e309), "guidance_scale: inf is not a finite number"),  # I5 the page
    (dict(gamma=float("nan")), "gamma: nan is not a finite number"),  # O35
    (dict(width=10**9, height=10**9), "width: 1000000000 must be a positive multiple of 8, at most 4096"),  # O36
], ids=["I5 page CFG 1e309", "O35 page gamma nan", "O36 page width 10^9"])
def test_the_page_refuses_non_finite_and_huge_numbers(app_configs, changes, message):
    from tests.test_app import form

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as err:
        forms.generate_config(app_configs[0], form(**changes), "T2V")
    assert "\n" not in str(err.value)
