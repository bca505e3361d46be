"""Box geometry for Face VCD: overlap, union, growth, squaring, clipping, and linking detections into tracks.

A box is `(x0, y0, x1, y1)` in pixels, half-open (`x1`, `y1` excluded), so its width is `x1 - x0`. Detection boxes
may be fractional; crop boxes are integers.
"""

import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 for disjoint or empty boxes."""
    inter = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    total = area(a) + area(b) - inter
    return inter / total if total > 0 else 0.0


def union(boxes: Sequence[Box]) -> Box:
    """The smallest box holding all `boxes`: one crop per track covers the face wherever it moves."""
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def grow(box: Box, factor: float) -> Box:
    """Scale width and height by `factor` about the centre (Impact Pack's `crop_factor`: context around the face)."""
    cx, cy = centre(box)
    half_w, half_h = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def square(box: Box) -> Box:
    """The square of side max(width, height) with the same centre: the stage denoises square crops."""
    cx, cy = centre(box)
    half = max(box[2] - box[0], box[3] - box[1]) / 2
    return cx - half, cy - half, cx + half, cy + half


def fit_square(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """An integer square inside a `width`×`height` frame for a square `box`.

    The side is rounded and capped at the frame's shorter side; the square is then shifted (not shrunk) inside the
    frame, so a face at the edge keeps all the context the frame has.
    """
    side = max(1, min(round(box[2] - box[0]), width, height))
    cx, cy = centre(box)
    x0 = min(max(round(cx - side / 2), 0), width - side)
    y0 = min(max(round(cy - side / 2), 0), height - side)
    return x0, y0, x0 + side, y0 + side


def crop_box(face_boxes: Sequence[Box], crop_factor: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The one crop of a track: union of its boxes over frames, grown by `crop_factor`, squared, fitted in frame."""
    return fit_square(square(grow(union(face_boxes), crop_factor)), width, height)


def clip_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer box covering `box` (rounded outwards), clipped to the frame."""
    return (max(0, math.floor(box[0])), max(0, math.floor(box[1])),
            min(width, math.ceil(box[2])), min(height, math.ceil(box[3])))


def link_tracks(detections: Sequence[Sequence[Box]], min_iou: float = 0.3) -> list[dict[int, Box]]:
    """Greedily link per-frame boxes into tracks (one per face), each `{frame: box}`.

    A box joins the track whose latest box overlaps it most (IoU ≥ `min_iou`) or, failing that, whose latest box's
    centre lies within half that box's size of its own centre (a fast-moving face); otherwise it starts a track.
    Each track takes at most one box per frame.
    """
    tracks: list[dict[int, Box]] = []
    for frame, boxes in enumerate(detections):
        free = set(range(len(tracks)))
        for box in sorted(boxes, key=area, reverse=True):
            matches = [(_match(box, tracks[t][max(tracks[t])], min_iou), t) for t in free]
            matches = [(score, t) for score, t in matches if score > 0]
            if matches:
                _, t = max(matches)
                tracks[t][frame] = box
                free.discard(t)
            else:
                tracks.append({frame: box})
    return tracks


def _match(box: Box, last: Box, min_iou: float) -> float:
    """How well `box` continues a track ending in `last`: 1 + IoU for an overlap match, a value in (0, 1] for a
    centre-distance match (closer is higher), 0 for no match."""
    overlap = iou(box, last)
    if overlap >= min_iou:
        return 1.0 + overlap
    (cx, cy), (lx, ly) = centre(box), centre(last)
    half_w, half_h = max((last[2] - last[0]) / 2, 1e-6), max((last[3] - last[1]) / 2, 1e-6)
    distance = max(abs(cx - lx) / half_w, abs(cy - ly) / half_h)
    return 1.0 - distance if distance < 1.0 else 0.0
