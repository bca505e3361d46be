"""The geometry of the refinement stages, as small pure functions: face boxes and tracks, crop boxes, feathered
paste masks, and overlapping tiles with smooth blending weights.

Boxes are (x0, y0, x1, y1) in pixels, half-open: columns x0..x1-1, rows y0..y1-1.
"""

import numpy as np

Box = tuple[int, int, int, int]


def box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_tracks(boxes_per_frame: list[list[Box]], min_iou: float = 0.1) -> list[list[Box]]:
    """Link per-frame detections into tracks: each box joins the track whose latest box overlaps it most
    (IoU ≥ min_iou), else starts a new track. Faces move little between frames, so greedy IoU is enough."""
    tracks: list[list[Box]] = []
    for boxes in boxes_per_frame:
        taken: set[int] = set()
        for box in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
            scores = [(box_iou(track[-1], box), i) for i, track in enumerate(tracks) if i not in taken]
            best = max(scores, default=(0.0, -1))
            if best[0] >= min_iou:
                tracks[best[1]].append(box)
                taken.add(best[1])
            else:
                tracks.append([box])
                taken.add(len(tracks) - 1)
    return tracks


def union_box(boxes: list[Box]) -> Box:
    """The smallest box holding every box of a track: one crop for all frames keeps the crop video still."""
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def crop_box(face: Box, factor: float, height: int, width: int) -> Box:
    """A square of side factor × the face's longer side, centred on the face, moved (then shrunk if it must be)
    to lie inside the frame (`face.crop_shape: square`)."""
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    side = min(round(max(face[2] - face[0], face[3] - face[1]) * factor), height, width)
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return (x0, y0, x0 + side, y0 + side)


def _into_frame(limit: int, start: int, size: float) -> tuple[int, int]:
    """A span of `size` px from `start`, moved into [0, limit) and cut to it (Impact Pack's `normalize_region`)."""
    if start < 0:
        return 0, int(min(limit, size))
    if start + size > limit:
        return int(max(0, limit - size)), limit
    return start, int(min(limit, start + size))


def graph_crop_box(face: Box, factor: float, height: int, width: int) -> Box:
    """The Impact Pack's crop region (`make_crop_region`, the Magic-Me graph's detector): the face box × `factor`
    in width and height separately (so a tall face gives a tall crop), centred on the face with the corner
    truncated to whole pixels, moved into the frame and cut to it."""
    face_w, face_h = face[2] - face[0], face[3] - face[1]
    crop_w, crop_h = face_w * factor, face_h * factor
    x0, x1 = _into_frame(width, int(face[0] + face_w / 2 - crop_w / 2), crop_w)
    y0, y1 = _into_frame(height, int(face[1] + face_h / 2 - crop_h / 2), crop_h)
    return (x0, y0, x1, y1)


def graph_denoise_size(crop_w: int, crop_h: int, guide_size: int, max_size: int, grid: int = 8) -> tuple[int, int]:
    """(width, height) the Impact Pack's detailer denoises a crop at (`enhance_detail_for_animatediff`, the graph's
    guide_size_for = crop_region): scaled by guide_size / the crop's shorter side, that factor reduced so the longer
    side is at most max_size (whole pixels truncated, aspect kept); a factor ≤ 1 means the crop's own size (faces
    are never shrunk). Then each side is rounded down to a multiple of `grid` (the latent grid; at least one cell):
    ComfyUI's VAE encoder crops the remainder off instead, which drops the crop's edge pixels."""
    scale = guide_size / min(crop_w, crop_h)
    w, h = int(crop_w * scale), int(crop_h * scale)
    if w > max_size or h > max_size:
        scale *= max_size / max(w, h)
        w, h = int(crop_w * scale), int(crop_h * scale)
    if scale <= 1.0 or w == 0 or h == 0:
        w, h = crop_w, crop_h
    return max(grid, w // grid * grid), max(grid, h // grid * grid)


def feather_mask(height: int, width: int, region: Box, feather: int) -> np.ndarray:
    """(H, W) weights: 1 inside `region` shrunk by `feather` px, falling linearly to 0 at the region's border,
    0 outside it. Pasting with it changes nothing outside the region."""
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    dist_y = np.minimum(ys - region[1], region[3] - ys)
    dist_x = np.minimum(xs - region[0], region[2] - xs)
    dist = np.minimum(dist_y[:, None], dist_x[None, :])
    if feather <= 0:
        return (dist > 0).astype(np.float32)
    return np.clip(dist / feather, 0.0, 1.0).astype(np.float32)


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian of `size` taps centred on the middle one (as torchvision's GaussianBlur)."""
    x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size)
    pdf = np.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def blurred_mask(mask: np.ndarray, feather: int, sigma: float = 10.0) -> np.ndarray:
    """(H, W) float32 paste weights: `mask` blurred as the Impact Pack's SEGSPaste feathers (a Gaussian of
    2·feather + 1 taps with σ = 10, edges reflected; the kernel shrinks to fit masks smaller than it).

    The kernel reaches `feather` px at most, so pixels farther than that from the mask get exactly 0.
    """
    weights = np.asarray(mask, dtype=np.float64)
    size = 2 * feather + 1
    if feather <= 0:
        return weights.astype(np.float32)
    if min(weights.shape) <= size:
        size = int(min(weights.shape) / 2)
        size += size % 2 == 0
        if size < 3:
            return weights.astype(np.float32)
    kernel, r = gaussian_kernel(size, sigma), size // 2
    padded = np.pad(weights, r, mode="reflect")
    rows = sum(kernel[i] * padded[i:i + weights.shape[0]] for i in range(size))
    both = sum(kernel[i] * rows[:, i:i + weights.shape[1]] for i in range(size))
    return both.astype(np.float32)


def tile_windows(length: int, tile: int, padding: int) -> list[tuple[int, int]]:
    """Tiles along one axis, as UltimateSDUpscale lays them: ceil(length / tile) tiles of `tile` px, evenly
    spaced so the last ends at the edge, each widened by `padding` px of context on both sides (clipped to the
    frame). Returns (start, stop) of each window; neighbouring windows share at least 2·padding px."""
    if length <= tile:
        return [(0, length)]
    count = -(-length // tile)
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    return [(max(0, s - padding), min(length, s + tile + padding)) for s in starts]


def tile_weight(height: int, width: int, ramp: int) -> np.ndarray:
    """Smooth per-tile blending weights: a raised-cosine ramp over `ramp` px at every border, 1 in the middle.

    Normalised by the summed weights of all tiles, neighbouring tiles cross-fade over their overlap, so no seam.
    Weights never reach 0, so a pixel covered by one tile keeps that tile's value exactly.
    """
    def profile(n: int) -> np.ndarray:
        pos = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5)
        if ramp <= 0:
            return np.ones(n)
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(pos / ramp, 0.0, 1.0))

    return np.outer(profile(height), profile(width)).astype(np.float32)
