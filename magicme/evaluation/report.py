"""The evaluation's outputs: metrics.json, metrics.csv and a self-contained report.html.

The HTML has no external assets: charts are inline SVG, frames are inline base64 PNGs, so the file can be mailed
or attached to a paper review as is.
"""

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from magicme.evaluation.extended import EXTENDED_COLUMNS
from magicme.video_io import atomic_path, to_uint8

COLUMNS = {  # metric key → (table/chart heading, what it means)
    "clip_i": ("CLIP-I", "CLIP image cosine, frames × reference photos"),
    "clip_t": ("CLIP-T", "CLIP cosine, frames × prompt without ID tokens"),
    "dino": ("DINO", "DINO CLS cosine, frames × reference photos"),
    "temporal": ("Temporal", "CLIP image cosine of consecutive frames"),
    "face_detected": ("Face found", "share of frames with a detected face"),
    "face_distance": ("Face dist ↓", "dlib descriptor Euclidean distance to the references (< 0.6: same person)"),
    "face_cosine": ("Face cos", "dlib descriptor cosine similarity to the references"),
    "face_match": ("Face match", "share of frames with a face whose mean distance is < 0.6"),
    **EXTENDED_COLUMNS,
}
CSV_FIELDS = ["level", "run", "stage", "identity", "index", "seed", "gamma", "prompt", "eval_prompt", "file", "videos", "frames",
              *COLUMNS]
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
THUMB = 96


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def strip(images: list[np.ndarray], height: int = THUMB) -> np.ndarray:
    """Images resized to one height and placed side by side (float [0, 1])."""
    tiles = []
    for image in images:
        pil = Image.fromarray(to_uint8(image))
        width = max(1, round(pil.width * height / pil.height))
        tiles.append(np.asarray(pil.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0)
    return np.concatenate(tiles, axis=1)


def contact_sheet(frames: np.ndarray, count: int) -> str:
    """`count` evenly spaced frames of a video in one row, as a base64 PNG."""
    picks = np.unique(np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int))
    return png_base64(strip([frames[i] for i in picks]))


def clean(value):
    """NaN → None so metrics.json is valid JSON (`null`)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def bar_chart(title: str, labels: list[str], values: list[float], colors: list[str]) -> str:
    """Horizontal bars, one per (run, stage); the axis spans [min(0, values), max(values, 0)]; NaN bars are empty."""
    finite = [v for v in values if not math.isnan(v)]
    low, high = min([0.0, *finite]), max([0.0, *finite])
    span = (high - low) or 1.0
    left, width, row = 260, 300, 22
    height = 30 + row * len(values)
    zero = left + width * (0.0 - low) / span
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="4" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value, color) in enumerate(zip(labels, values, colors)):
        y = 26 + row * i
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{html.escape(label[-40:])}</text>')
        if not math.isnan(value):
            x0, x1 = sorted((zero, left + width * (value - low) / span))
            parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{row - 6}" '
                         f'fill="{color}"/>')
        parts.append(f'<text x="{left + width + 6}" y="{y + 14}">{fmt(value)}</text>')
    parts.append(f'<line x1="{zero:.1f}" y1="24" x2="{zero:.1f}" y2="{height}" stroke="#333"/></svg>')
    return "".join(parts)


def render_html(summary: dict, sheets: list[str], references: list[np.ndarray]) -> str:
    groups, videos = summary["groups"], summary["videos"]
    runs = list(dict.fromkeys(g["run"] for g in groups))
    colors = [PALETTE[runs.index(g["run"]) % len(PALETTE)] for g in groups]
    labels = [" / ".join(x for x in (g["run"], g["stage"], g.get("identity")) if x) for g in groups]
    esc = html.escape
    head = "".join(f'<th title="{esc(doc)}">{esc(name)}</th>' for name, doc in COLUMNS.values())
    table = "".join(
        f"<tr><td>{esc(g['run'])}</td><td>{esc(g['stage'])}</td><td>{esc(g.get('identity') or '')}</td>"
        f"<td>{g['videos']}</td><td>{g['frames']}</td>"
        + "".join(f"<td>{fmt(g[m])}</td>" for m in COLUMNS) + "</tr>" for g in groups)
    charts = "".join(f"<figure>{bar_chart(f'{name} — {doc}', labels, [g[m] for g in groups], colors)}</figure>"
                     for m, (name, doc) in COLUMNS.items())
    rows = "".join(
        f"<tr><td>{esc(v['run'])}<br>{esc(v['stage'])} #{v['index']}<br>seed {v['seed']}"
        f"{'<br>' + esc(v['identity']) if v.get('identity') else ''}</td>"
        f"<td>{esc(v['eval_prompt'])}</td>" + "".join(f"<td>{fmt(v[m])}</td>" for m in COLUMNS)
        + f'<td><img alt="frames" src="data:image/png;base64,{sheet}"></td></tr>' for v, sheet in zip(videos, sheets))
    refs = summary["references"]
    settings = esc(json.dumps(summary["settings"]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>magicme evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
figure{{display:inline-block;margin:6px}}svg text{{font-size:12px}}</style></head><body>
<h1>Evaluation</h1>
<p>Runs: {esc(', '.join(summary['runs']))}<br>References: {esc(refs['folder'])} ({len(refs['photos'])} photos,
{refs['faces_found']} with a face) · device {esc(summary['device'])}<br><small>settings: {settings}</small></p>
<img alt="reference photos" src="data:image/png;base64,{png_base64(strip(references))}">
<h2>Summary (mean over videos; hover a heading for its definition)</h2>
<table id="summary"><tr><th>run</th><th>stage</th><th>identity</th><th>videos</th><th>frames</th>{head}</tr>{table}</table>
<h2>Charts</h2>{charts}
<h2>Videos</h2>
<table id="videos"><tr><th>video</th><th>prompt scored (ID tokens removed)</th>{head}<th>frames</th></tr>{rows}</table>
</body></html>
"""


def write_reports(out: Path, summary: dict, sheets: list[str], references: list[np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(clean(summary), indent=2, ensure_ascii=False))
    with atomic_path(out / "metrics.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in summary["videos"]:
            writer.writerow({"level": "video", **row})
        for row in summary["groups"]:
            writer.writerow({"level": "aggregate", **row})
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(render_html(summary, sheets, references), encoding="utf-8")
