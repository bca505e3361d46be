"""`sample.py --run-dir`: a run killed at any point continues where it stopped, renders nothing twice and ends with
the files of an uninterrupted run; a changed setting, a second writer, a stranger's folder are refused."""

import json
import os
from pathlib import Path

import pytest

import sample
from magicme.stages import STAGES, Stage
from magicme.video_io import TEMP_MARK
from tests.test_sampling import write_config


class Crash(RuntimeError):
    pass


class Count(Stage):
    """A refinement stage that records which samples reach it and can crash the run at its n-th call."""

    name = "count"
    calls: list[int] = []
    crash_at: int | None = None

    def __call__(self, pipe, video, sample, generator):
        Count.calls.append(sample.index)
        if len(Count.calls) == Count.crash_at:
            raise Crash("killed")
        return video, {}


@pytest.fixture(autouse=True)
def one_thread():
    """Renders on one thread: what each process of a launch gets, and quick on a busy two-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def count_stage(monkeypatch):
    monkeypatch.setitem(STAGES, "count", Count)
    Count.calls, Count.crash_at = [], None
    return Count


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder by relative path, except the per-process shards and the timings in samples.jsonl
    (seconds differ from run to run)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not rel.startswith("manifest/rank-"):
            found[rel] = path.read_bytes()
    found["samples.jsonl"] = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                              for line in found["samples.jsonl"].decode().splitlines()]
    return found


def run(config, run_dir, *extra) -> int:
    return sample.main(["--config", str(config), "--quiet", "--run-dir", str(run_dir), *extra])


@pytest.fixture
def config(tmp_path, tiny_bundle):
    return write_config(tmp_path, tiny_bundle, stages=["t2v", "count"], frames=8, width=64, height=64,
                        seeds=[-1, 7], prompts=["a photo of embedding:tinyperson man", "<tinyperson> man running"],
                        **{"model.motion_loras": []})


def test_killed_and_resumed_equals_uninterrupted_and_renders_nothing_twice(tmp_path, config, count_stage):
    killed = tmp_path / "killed"
    count_stage.crash_at = 3  # in the third sample, after its t2v video was written
    with pytest.raises(Crash):
        run(config, killed)
    assert count_stage.calls == [0, 1, 2]
    (killed / ".lock").write_text("999999999")  # what a kill -9 leaves: a lock whose owner is gone …
    (killed / f".a-photo-of-x.q1w2e3r4{TEMP_MARK}.mp4").write_bytes(b"half")  # … and an interrupted write's temp file
    count_stage.calls, count_stage.crash_at = [], None
    assert run(config, killed) == 0
    assert count_stage.calls == [2, 3]  # the finished samples 0 and 1 are not rendered again; the random seed kept

    reference = tmp_path / "reference"
    assert run(killed / "config.yaml", reference) == 0  # the same samples, uninterrupted
    assert files_of(killed) == files_of(reference)
    records = files_of(killed)["samples.jsonl"]
    assert [(r["index"], r["stage"]) for r in records] == [(i, s) for i in range(4) for s in ("t2v", "count")]
    assert not (killed / ".lock").exists() and not list(killed.glob(".a-photo*"))

    count_stage.calls = []
    assert run(config, killed) == 0 and count_stage.calls == []  # finished: nothing to do
    (killed / records[0]["files"]["mp4"]).unlink()  # a lost file makes its sample unfinished again
    assert run(config, killed) == 0 and count_stage.calls == [0]


def test_a_resume_with_other_settings_names_the_key(tmp_path, config, count_stage, capsys):
    folder = tmp_path / "run"
    assert run(config, folder) == 0
    before = files_of(folder)
    count_stage.calls = []
    for override, key in [("steps=3", "steps"), ("fps=5", "fps"), ("stages=[t2v]", "stages"),
                          ("negative_prompt=ugly", "prompts[0].negative_prompt"), ("seeds=[-1,8]", "prompts[0].seeds")]:
        assert run(config, folder, override) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith(f"error: {key}") and "--force-new" in err, err
    assert run(config, folder, "output_dir=elsewhere", "cpu_offload=false") == 0  # free keys may change
    assert count_stage.calls == [] and files_of(folder) == before


def test_force_new_moves_the_old_run_aside(tmp_path, config, count_stage):
    folder = tmp_path / "run"
    assert run(config, folder) == 0
    before = files_of(folder)
    assert run(config, folder, "steps=3", "--force-new") == 0
    (aside,) = tmp_path.glob("run.old-*")
    assert files_of(aside) == before  # nothing lost
    assert not set(files_of(folder)) & {k for k in before if k.endswith(".mp4")}  # new settings, new names


def test_a_second_writer_and_a_stranger_folder_are_refused(tmp_path, config, count_stage, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text(str(os.getppid()))  # a live process holds the run
    assert run(config, folder) == 2
    assert f"another process (pid {os.getppid()}) is writing this run" in capsys.readouterr().err
    (folder / ".lock").unlink()
    (folder / "notes.txt").write_text("mine")
    assert run(config, folder) == 2
    assert "holds notes.txt but no config.yaml" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and count_stage.calls == []
    assert sample.main(["--config", str(config), "--quiet", "--force-new"]) == 2
    assert "--force-new: only with --run-dir" in capsys.readouterr().err
