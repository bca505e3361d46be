"""What a run folder has finished, recorded so that any process may be killed at any moment.

Each process of a launch appends one JSON line per stage video to its own shard, `manifest/rank-<N>.jsonl`, after
that video's files are in place (written atomically), flushed and fsynced: a process killed at any point loses at
most the sample it was rendering, and no two processes ever write one file. A line cut short by a kill is skipped
when reading and closed off before the next append.

A stage video is finished when a record carries its hash (magicme/naming.py) and every file the record lists
exists; a sample is finished when all its stages are. `samples.jsonl`, what evaluation reads, is merged from the
shards in grid order (the latest record of each stage video), at the start and the end of every run.
"""

import json
import os
from pathlib import Path

from magicme.stages import Sample
from magicme.video_io import atomic_path

MANIFEST_DIR = "manifest"
SAMPLES_FILE = "samples.jsonl"


class ShardWriter:
    """Appends records to one process's shard, each durable before the next sample starts."""

    def __init__(self, run_dir: Path, rank: int):
        self.path = Path(run_dir) / MANIFEST_DIR / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "ab")
        if self.handle.tell() > 0 and not ends_with_newline(self.path):
            self.handle.write(b"\n")  # close off a line a kill cut short

    def append(self, record: dict) -> None:
        self.handle.write((json.dumps(record) + "\n").encode())
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def read_records(run_dir: Path) -> list[dict]:
    """Every complete record of every shard (shards in name order, lines in order)."""
    records = []
    for shard in sorted((Path(run_dir) / MANIFEST_DIR).glob("rank-*.jsonl")):
        for line in shard.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("hash"), str):
                records.append(record)
    return records


def finished_videos(run_dir: Path, records: list[dict]) -> dict[str, dict]:
    """{stage hash: its latest record} of the stage videos whose listed files all exist."""
    done = {}
    for record in records:
        files = record.get("files")
        if isinstance(files, dict) and files and all((Path(run_dir) / name).exists() for name in files.values()):
            done[record["hash"]] = record
    return done


def finished(sample: Sample, done: dict[str, dict]) -> bool:
    return all(h in done for _, h in sample.hashes)


def merge(run_dir: Path, samples: list[Sample]) -> list[dict]:
    """Write `samples.jsonl` from the shards: the finished stage videos of `samples`, in grid and stage order."""
    done = finished_videos(run_dir, read_records(run_dir))
    merged = [{**done[h], "index": sample.index} for sample in samples for _, h in sample.hashes if h in done]
    with atomic_path(Path(run_dir) / SAMPLES_FILE) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in merged))
    return merged
