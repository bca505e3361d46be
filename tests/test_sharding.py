"""Several processes share a grid: a deterministic assignment balanced by cost, and a 2-process `accelerate launch`
on CPU (gloo) writes exactly the files of a 1-process run."""

import os
import socket
import subprocess
import sys
from pathlib import Path


import sample
from magicme.schema import load_sample_config
from magicme.sharding import assign, stage_cost
from tests.test_resume import files_of, one_thread  # noqa: F401 (a fixture)
from tests.test_sampling import write_config


def test_equal_costs_alternate_and_the_longest_go_first():
    assert assign([1.0] * 5, 2) == [[0, 2, 4], [1, 3]]
    assert assign([1, 1, 1, 1, 4, 1], 2) == [[4, 5], [0, 1, 2, 3]]
    assert assign([3, 2, 2, 1], 3) == [[0], [1, 3], [2]]
    assert assign([1.0] * 3, 1) == [[0, 1, 2]]


def test_a_stage_costs_frames_times_pixels_times_steps_run():
    cfg = load_sample_config(None, ["frames=8", "width=64", "height=32", "steps=10", "stages=[t2v,face,tiled]",
                                    "face.size=128", "face.strength=0.5", "tiled.scale=2", "tiled.strength=0.2",
                                    "tiled.steps=5"])
    assert stage_cost(cfg, "t2v") == 8 * 64 * 32 * 10
    assert stage_cost(cfg, "face") == 8 * 128 * 128 * 10  # the steps run, whatever the strength
    assert stage_cost(cfg, "tiled") == 8 * 64 * 32 * 4 * 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_files_of_one(tmp_path, tiny_bundle):
    config = write_config(tmp_path, tiny_bundle, frames=8, width=64, height=64, seeds=[1, 2, 3],
                          prompts=["a photo of embedding:tinyperson man", "<tinyperson> man running"],
                          **{"model.motion_loras": []})
    one, two = tmp_path / "one", tmp_path / "two"
    assert sample.main(["--config", str(config), "--quiet", "--run-dir", str(one)]) == 0  # 1 thread (fixture)
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
         "sample.py", "--config", str(config), "--quiet", "--run-dir", str(two)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = {p.name: len(p.read_text().splitlines()) for p in (two / "manifest").glob("rank-*.jsonl")}
    assert shards == {"rank-0.jsonl": 3, "rank-1.jsonl": 3}  # 6 samples, shared
    assert files_of(two) == files_of(one)  # names, MP4/GIF bytes, config.yaml, grid.gif, samples.jsonl
