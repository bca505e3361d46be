"""Throughput of the evaluation on CPU with the tiny random-weight models, and of the dlib face metric alone.

    python scripts/benchmark_evaluation.py [--videos 4] [--frames 16] [--size 512] [--repeats 3]

The run holds `--videos` MP4s of `--frames` frames (the astronaut photo, mirrored on odd frames, at --size²), scored
against the photo. With tiny models the CLIP/DINO cost is negligible, so the whole-evaluation figure is dominated
by video decoding and dlib; with ViT-L/14 on a GPU add CLIP's cost. Figures (median of the repeats) are printed
last as `name=value` lines: frames per second of the whole `evaluate()` call with and without the face metric
(model loading and report writing included), of `FaceEncoder.describe` alone at upsample 0 and 1, and of the
motion metrics (Farneback flow, on by default) alone.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.data import astronaut  # noqa: E402

from magicme.evaluation.evaluate import EvalSettings, evaluate  # noqa: E402
from magicme.evaluation.faces import FaceEncoder  # noqa: E402
from magicme.evaluation.video_metrics import motion_amplitude, optical_flow  # noqa: E402
from magicme.tiny.eval_models import save_tiny_clip, save_tiny_dino  # noqa: E402
from magicme.video_io import write_video  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    photo = np.asarray(Image.fromarray(astronaut()).resize((args.size, args.size)), dtype=np.float32) / 255.0
    video = np.stack([photo if i % 2 == 0 else photo[:, ::-1] for i in range(args.frames)])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        refs = root / "refs"
        refs.mkdir()
        Image.fromarray(astronaut()).save(refs / "astronaut.png")
        run = root / "run"
        run.mkdir()
        records = []
        for index in range(args.videos):
            files = write_video(run / f"{index:04d}-bench-{index}", video, 8, formats=("mp4",))
            records.append({"index": index, "prompt": "a photo of embedding:astro woman", "negative_prompt": "",
                            "seed": index, "gamma": 0.1, "stage": "t2v", "files": files, "frames": args.frames,
                            "height": args.size, "width": args.size, "fps": 8, "seconds": 0.0})
        (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        settings = EvalSettings(clip=str(save_tiny_clip(root / "clip")), dino=str(save_tiny_dino(root / "dino")),
                                device="cpu", cache=False)  # every repeat scores (the cache would skip)
        frames = args.videos * args.frames
        with_faces = timed(lambda: evaluate([run], refs, root / "out", settings, progress=False), args.repeats)
        settings.faces = False
        without = timed(lambda: evaluate([run], refs, root / "out", settings, progress=False), args.repeats)
    faces = {up: FaceEncoder(upsample=up) for up in (0, 1)}
    contiguous = [np.ascontiguousarray(f) for f in video]
    face_s = {up: timed(lambda e=e: [e.describe(f) for f in contiguous], args.repeats) for up, e in faces.items()}
    motion_s = timed(lambda: motion_amplitude(optical_flow(video)), args.repeats)
    print(f"# {args.videos} videos x {args.frames} frames at {args.size}x{args.size}, CPU, "
          f"{torch.get_num_threads()} torch threads, tiny CLIP/DINO")
    print(f"eval_frames_per_s={frames / with_faces:.2f}")
    print(f"eval_no_faces_frames_per_s={frames / without:.2f}")
    print(f"face_upsample0_frames_per_s={args.frames / face_s[0]:.2f}")
    print(f"face_upsample1_frames_per_s={args.frames / face_s[1]:.2f}")
    print(f"motion_frames_per_s={args.frames / motion_s:.2f}")


if __name__ == "__main__":
    main()
