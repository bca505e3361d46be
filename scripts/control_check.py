"""Measure how well an output clip keeps the pose and/or depth of the clip it was made from (docs/control.md).

    python scripts/control_check.py --input dance.mp4 --output outputs/.../sample.mp4 \
        [--pose models/control/vitpose-base-simple [--person models/clipseg]] \
        [--depth models/control/depth-anything-v2-small] [--alpha 0.1]

The input clip is fitted to the output's frames and size as a run fits `input_video` (its first frames, resized to
cover, centre-cropped), then both go through the same models: VitPose keypoints (mean distance normalised by the
input person's size, PCK@alpha; each clip's person boxed by CLIPSeg with --person, as the run's `person:` does, else
the whole frame) and relative depth (per-frame correlation). Prints one JSON object.

Meaningful numbers need the real models (bash download_checkpoint.sh --only control): the tiny random-weight ones
(scripts/make_tiny_models.py) only exercise the plumbing. Without --pose and --depth, both default folders are used.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.cli import quiet_libraries  # noqa: E402

quiet_libraries()

from magicme.control.settings import DOWNLOAD, PREPROCESSORS  # noqa: E402
from magicme.errors import ConfigError  # noqa: E402


def measure(input_clip: str, output_clip: str, pose: str | None, depth: str | None, alpha: float = 0.1,
            device: str = "cpu", person: str | None = None) -> dict:
    """The agreement of `output_clip` with `input_clip` under the given preprocessor models."""
    from magicme.control.agreement import depth_agreement, pose_agreement
    from magicme.control.depth import estimate_depth
    from magicme.control.pose import estimate_keypoints, segmented_boxes

    def keypoints(video):
        return estimate_keypoints(video, pose, device, segmented_boxes(video, person, device) if person else None)
    from magicme.video_io import prepare_input_video
    from magicme.video_io import read_video

    output = read_video(output_clip)
    frames, height, width = output.shape[:3]
    source = prepare_input_video(input_clip, frames, height, width, key="--input")
    result = {"frames": frames, "width": width, "height": height}
    if pose:
        (a, sa), (b, sb) = keypoints(source), keypoints(output)
        result["pose"] = pose_agreement(a, sa, b, sb, alpha=alpha)
    if depth:
        result["depth"] = depth_agreement(estimate_depth(source, depth, device), estimate_depth(output, depth, device))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="the clip the output was made from (input_video)")
    parser.add_argument("--output", required=True, help="the generated clip (MP4/GIF/frame folder)")
    parser.add_argument("--pose", default=None, help="VitPose folder (default: models/control/vitpose-base-simple)")
    parser.add_argument("--person", default=None, help="CLIPSeg folder boxing the person for --pose (default: the "
                                                       "whole frame)")
    parser.add_argument("--depth", default=None, help="depth model folder (default: models/control/depth-anything-"
                                                      "v2-small)")
    parser.add_argument("--alpha", type=float, default=0.1, help="PCK threshold, a fraction of the person's size")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    pose, depth = args.pose, args.depth
    if pose is None and depth is None:
        pose, depth = PREPROCESSORS["pose"], PREPROCESSORS["depth"]
    try:
        for key, path in (("--input", args.input), ("--output", args.output)):
            if not Path(path).exists():
                raise ConfigError(f"{key}: {path} not found")
        if args.person is not None and pose is None:
            raise ConfigError("--person: boxes the person for --pose; give --pose too")
        for key, path in (("--pose", pose), ("--depth", depth), ("--person", args.person)):
            if path is not None and not (Path(path) / "config.json").is_file():
                raise ConfigError(f"{key}: no model at {path} (a transformers folder with config.json); {DOWNLOAD}")
        result = measure(args.input, args.output, pose, depth, args.alpha, args.device, args.person)
        print(json.dumps(result, indent=2))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
