"""Evaluation of sample runs: the paper's CLIP-I / CLIP-T / DINO / temporal consistency plus dlib face identity,
written as metrics.json, metrics.csv and a self-contained report.html (see docs/evaluation.md)."""
