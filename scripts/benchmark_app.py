"""Time from a click on T2V to the first video on the page, against sample.py doing the same work.

    python scripts/benchmark_app.py [--repeats 5] [--chromium /usr/bin/chromium]

On the tiny bundle (64², 8 frames, 2 steps, CPU): starts `app.py`, drives the page with headless Chromium
(Playwright) and times click → the T2V <video> shown, the first click (the pipeline loads) and later ones (kept
pipeline, new seed each). The same work without the page: `sample.py` on the first click's config.yaml (a new
process: imports + load + render), and `run_sampling` in this process with the pipeline kept (the render alone).
Prints `name=value` lines; docs/app.md has the figures.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_app(sample_yaml: Path, train_yaml: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(folder / "gradio"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--config", str(sample_yaml), "--train-config",
                               str(train_yaml), "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise SystemExit("the app did not start")


def click_to_video(page, seed: int) -> tuple[float, str]:
    """Seconds from the click on T2V to the first video element on the page; the run folder."""
    page.fill("#seed input", str(seed))
    page.evaluate("() => { const v = document.querySelector('#gen-video-first video'); if (v) v.remove(); }")
    start = time.perf_counter()
    page.click("#gen-t2v")
    page.wait_for_selector("#gen-video-first video", timeout=600_000)
    seconds = time.perf_counter() - start
    page.wait_for_function("() => document.querySelector('#gen-status textarea').value.startsWith('done')")
    status = page.input_value("#gen-status textarea")
    return seconds, status.split(": ", 1)[1].split(" (")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from magicme.schema import load_sample_config
    from magicme.sampling import run_sampling
    from magicme.tiny.app_configs import write_app_configs
    from magicme.tiny.bundle import build_tiny_bundle
    from magicme.webapp.jobs import PipelineCache

    folder = Path(tempfile.mkdtemp(prefix="benchmark-app-"))
    sample_yaml, train_yaml = write_app_configs(folder, build_tiny_bundle(folder / "tiny"))
    server, url = start_app(sample_yaml, train_yaml, folder)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#gen-t2v")
            cold, first_run = click_to_video(page, 1000)
            warm = [click_to_video(page, 1001 + i)[0] for i in range(args.repeats)]
            browser.close()
    finally:
        server.terminate()
        server.wait()
    config = Path(first_run) / "config.yaml"
    cli = []
    for i in range(max(1, args.repeats // 2)):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "sample.py"), "--config", str(config), "--quiet", "--run-dir",
                        str(folder / f"cli-{i}")], check=True, cwd=ROOT, capture_output=True)
        cli.append(time.perf_counter() - start)
    cache, inproc = PipelineCache(), []
    for i in range(args.repeats + 1):
        cfg = load_sample_config(config, [f"seeds=[{2000 + i}]"])
        start = time.perf_counter()
        run_sampling(None, cfg=cfg, progress=False, run_dir=folder / f"inproc-{i}", load=cache)
        inproc.append(time.perf_counter() - start)
    figures = {
        "app_first_click_to_video_s": cold,
        "app_click_to_video_s": statistics.median(warm),
        "sample_py_process_s": statistics.median(cli),
        "run_sampling_kept_pipeline_s": statistics.median(inproc[1:]),
    }
    figures["page_overhead_s"] = figures["app_click_to_video_s"] - figures["run_sampling_kept_pipeline_s"]
    figures["app_click_over_sample_py"] = figures["app_click_to_video_s"] / figures["sample_py_process_s"]
    figures["app_first_click_over_sample_py"] = cold / figures["sample_py_process_s"]
    for name, value in figures.items():
        print(f"{name}={value:.3f}")


if __name__ == "__main__":
    main()
