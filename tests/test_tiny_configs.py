"""Every shipped tiny config runs as a user runs it: configs/tiny/ mirrors each real-weight config of configs/sample,
configs/train and configs/eval, each tiny sampling config renders through sample.py, each training config trains
through train.py, and the command train.py prints renders the new identity. The configs run against the folder
scripts/make_tiny_models.py writes (the `tiny_models` fixture), `models/tiny/` replaced by it, outputs in tmp_path."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

import sample
import train

TINY = Path("configs/tiny")
SAMPLING = sorted(TINY.glob("sample*.yaml"))
TRAINING = sorted(TINY.glob("train*.yaml"))
# configs whose sizes were chosen so that the random CLIPSeg finds one or two "faces" in their noise videos; in the
# other mirrors the face stage may find none and pass the video through (it says so), which they also exercise
REFINES_FACES = {"sample_vcd", "sample_paper", "sample_long", "sample_control_pose"}
REAL = sorted(Path("configs/sample").glob("*.yaml")) + sorted(Path("configs/train").glob("*.yaml")) + [
    Path("configs/eval/default.yaml")]


def mirrored() -> dict[str, Path]:
    """Real config path → the tiny config whose first line says `# mirrors: <path>`."""
    found = {}
    for path in TINY.glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        if first.startswith("# mirrors: "):
            found[first.removeprefix("# mirrors: ").strip()] = path
    return found


def test_every_real_config_has_a_tiny_mirror_running_its_stages():
    mirrors = mirrored()
    assert sorted(mirrors) == sorted(str(p) for p in REAL)
    for real, tiny in mirrors.items():
        real_cfg, tiny_cfg = yaml.safe_load(Path(real).read_text()), yaml.safe_load(tiny.read_text())
        assert real_cfg.get("stages", ["t2v"]) == tiny_cfg.get("stages", ["t2v"]), tiny
        assert bool(real_cfg.get("identities")) == bool(tiny_cfg.get("identities")), tiny


def test_the_paper_mirror_keeps_every_non_model_setting():
    """configs/tiny/sample_paper.yaml = configs/sample/paper.yaml but for the models, the identities and the sizes."""
    real = yaml.safe_load(Path("configs/sample/paper.yaml").read_text())
    tiny = yaml.safe_load((TINY / "sample_paper.yaml").read_text())
    sizes = {"width", "height", "size", "min_face", "tile", "padding", "clipseg_model"}
    for key in set(real) - {"model", "prompts"}:
        if isinstance(real[key], dict):
            assert {k: v for k, v in real[key].items() if k not in sizes} == \
                   {k: v for k, v in tiny[key].items() if k not in sizes}, key
        elif key not in sizes:
            assert real[key] == tiny[key], key
    assert real["model"]["scheduler"] == tiny["model"]["scheduler"]


def localise(path: Path, models: Path, folder: Path, **changes) -> Path:
    """The config with `models/tiny/` pointing at `models`, written into `folder` (outputs there too)."""
    text = path.read_text().replace("models/tiny/", f"{models}/")
    cfg = yaml.safe_load(text)
    cfg.update(output_dir=str(folder / "out"), **changes)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / path.name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("path", SAMPLING, ids=lambda p: p.stem)
def test_each_tiny_sampling_config_renders(path, tiny_models, tmp_path, capsys):
    """As shipped (steps, sizes, stages); the VCD config with its progress bars, which name each stage."""
    cfg = yaml.safe_load(path.read_text())
    config = localise(path, tiny_models, tmp_path)
    quiet = [] if path.stem == "sample_vcd" else ["--quiet"]
    assert sample.main(["--config", str(config), *quiet]) == 0
    if not quiet:
        bars = capsys.readouterr().err
        assert all(name in bars for name in ("t2v: ", "face 1/", "tiled, tile 1: ", "tiled, tile 4: "))
    (run_dir,) = (tmp_path / "out").iterdir()
    rows = records(run_dir)
    stages = cfg.get("stages", ["edit" if cfg.get("input_video") else "t2v"])
    assert [r["stage"] for r in rows[:len(stages)]] == stages
    assert len(rows) % len(stages) == 0 and all((run_dir / r["files"]["mp4"]).is_file() for r in rows)
    if path.stem in REFINES_FACES:  # the face stage really refined something: a face was found, not passed through
        faces = [r for r in rows if r["stage"] == "face"]
        assert any(r["faces"] >= 1 and not r["passed_through"] for r in faces)


def train_and_render(config: Path, capsys, output: Path) -> list[dict]:
    """train.py, then each `sample.py` command it printed (with its outputs under `output`)."""
    assert train.main(["--config", str(config), "--quiet"]) == 0
    printed = capsys.readouterr().out
    commands = [line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("render ")]
    assert commands
    rendered = []
    for number, command in enumerate(commands):
        words = shlex.split(command)
        assert words[:2] == ["python", "sample.py"]
        assert sample.main(["--quiet", *words[2:], f"output_dir={output / str(number)}", "steps=1"]) == 0
        (run_dir,) = (output / str(number)).iterdir()
        rendered += records(run_dir)
    return rendered


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.stem)
def test_each_tiny_training_config_trains_and_its_printed_command_renders_the_identity(path, tiny_models, tmp_path,
                                                                                       capsys):
    """The identity is copied into the folder the config's sample_config reads (auto), and the printed command
    renders a video with it."""
    cfg = yaml.safe_load(path.read_text())
    sample_config = Path(cfg["sample_config"])
    embeddings = tmp_path / "embeddings"
    sampling = localise(sample_config, tiny_models, tmp_path / "sampling",
                        model={**yaml.safe_load(sample_config.read_text().replace("models/tiny/", f"{tiny_models}/"))[
                            "model"], "embeddings_dir": str(embeddings)})
    changes = {"sample_config": str(sampling), "mask_cache_dir": str(tmp_path / "masks")}
    if cfg["copy_to_embeddings_dir"] != "auto":
        changes["copy_to_embeddings_dir"] = str(tmp_path / "own")
    config = localise(path, tiny_models, tmp_path / "training", **changes)
    trained = yaml.safe_load(config.read_text())
    names = trained.get("identities") or [trained["name"]]
    folder = embeddings if cfg["copy_to_embeddings_dir"] == "auto" else tmp_path / "own"
    suffix = ".safetensors" if cfg["model"].get("family") == "sdxl" else ".pt"
    rows = train_and_render(config, capsys, tmp_path / "rendered")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}{suffix}" for n in names)
    shown = [r["identity"] or re.search(r"<(\w+)>", r["prompt"]).group(1) for r in rows if r["stage"] == rows[0]["stage"]]
    assert sorted(set(shown)) == sorted(names)  # each printed command rendered its own new identity


def test_a_second_training_of_the_same_name_needs_force(tiny_models, tmp_path, capsys):
    """An identity file of the same name in the copy folder is another training's: refused before anything
    loads (nothing written), replaced with --force."""
    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    (embeddings / "tinyperson2.pt").write_bytes(b"someone else")
    config = localise(TINY / "train.yaml", tiny_models, tmp_path, copy_to_embeddings_dir=str(embeddings),
                      mask_cache_dir=str(tmp_path / "masks"), max_steps=1, validation={"every": 0})
    assert train.main(["--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: copy_to_embeddings_dir: {embeddings / 'tinyperson2.pt'} already exists" in err and "--force" in err
    assert (embeddings / "tinyperson2.pt").read_bytes() == b"someone else" and not (tmp_path / "out").exists()
    assert train.main(["--config", str(config), "--quiet", "--force"]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    assert (embeddings / "tinyperson2.pt").read_bytes() == (run_dir / "tinyperson2.pt").read_bytes()
