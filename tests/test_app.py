"""The web app: the form → config mapping and its error messages (fast), the app's runs against sample.py and
train.py on the tiny bundle, and one real headless-Chromium session through the page (screenshots kept in
test-artifacts/app/)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import sample
from magicme.errors import ConfigError
from magicme.tiny.app_configs import write_app_configs
from magicme.video_io import read_video
from magicme.webapp import forms

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "app"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def write_photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def form(**changes) -> forms.VideoForm:
    values = dict(identity="tinyperson", class_word="man", prompt="a photo of {id} walking", negative_prompt="ugly",
                  seed=7, random_seed=False, steps=3, guidance_scale=5.0, gamma=0.3, frames=8, width=64, height=48)
    return forms.VideoForm(**{**values, **changes})


# -- the form → config mapping (no models) ------------------------------------------------------------------------


@pytest.fixture
def app_configs(tmp_path, tiny_bundle):
    return write_app_configs(tmp_path, tiny_bundle)


def test_every_field_of_the_generate_form_reaches_the_config(app_configs):
    cfg = forms.generate_config(app_configs[0], form(), "T2V + Face")
    assert list(cfg.stages) == ["t2v", "face"]
    assert list(cfg.prompts) == ["a photo of {id} walking"] and cfg.negative_prompt == "ugly"
    assert list(cfg.seeds) == [7] and cfg.steps == 3 and cfg.guidance_scale == 5.0 and cfg.gamma == 0.3
    assert (cfg.frames, cfg.width, cfg.height) == (8, 64, 48)
    assert list(cfg.identities) == ["tinyperson"] and dict(cfg.class_words) == {"tinyperson": "man"}
    assert cfg.face.min_face == 30  # the app's config file stays underneath the form
    assert list(forms.generate_config(app_configs[0], form(random_seed=True), "T2V").seeds) == [-1]
    assert list(forms.generate_config(app_configs[0], form(), "T2V + Face + Tiled").stages) == ["t2v", "face", "tiled"]
    plain = forms.generate_config(app_configs[0], form(identity=forms.NO_IDENTITY, prompt="a cat"), "T2V")
    assert plain.identities is None and dict(plain.class_words) == {}


def test_edit_form_sets_the_clip_and_strength(app_configs, tmp_path):
    clip = tmp_path / "clip.gif"
    clip.write_bytes(b"GIF89a")
    cfg = forms.edit_config(app_configs[0], form(), str(clip), 0.35)
    assert list(cfg.stages) == ["edit"] and cfg.input_video == str(clip) and cfg.input_strength == 0.35


@pytest.mark.parametrize("changes, expected", [
    (dict(prompt="  "), "prompt: empty; write a prompt"),
    (dict(steps=2.5), "steps: 2.5 is not a whole number"),
    (dict(width=None), "width: empty; enter a whole number"),
    (dict(gamma=1.0), "gamma: 1.0 not in [0, 1)"),
    (dict(width=60), "width: 60 must be a positive multiple of 8"),
    (dict(prompt="a photo of a man"), "has no {id}; with identities set"),
    (dict(identity="nobody"), "identities: 'nobody' has no embedding file"),
    (dict(class_word="(man:2)"), "class_words.tinyperson: '(man:2)' must be plain words"),
])
def test_bad_generate_forms_give_one_line(app_configs, changes, expected):
    with pytest.raises(ConfigError) as err:
        forms.generate_config(app_configs[0], form(**changes), "T2V")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_bad_uploads_give_one_line(tmp_path):
    with pytest.raises(ConfigError, match="photos: none uploaded; upload 5-10 photos"):
        forms.check_photos([])
    with pytest.raises(ConfigError, match=r"photos: notes.txt is not an image \(.png"):
        forms.check_photos([str(write_photos(tmp_path, 1)[0]), str(tmp_path / "notes.txt")])
    with pytest.raises(ConfigError, match="name: 'Ann Lee' must be lower-case"):
        forms.check_identity_name("Ann Lee")
    with pytest.raises(ConfigError, match=r"video: long.mp4 is 90.0 s long \(720 frames\); this app edits clips up "
                                          r"to 60 s; trim it"):
        forms.check_clip_length(720, 90.0, "/x/long.mp4", 60)
    forms.check_clip_length(480, 60.0, "/x/ok.mp4", 60)
    with pytest.raises(ConfigError, match="video: no clip uploaded"):
        forms.edit_config("unused.yaml", form(), None, 0.5)
    assert forms.photo_advice(6) == "" and "made for 5-10" in forms.photo_advice(2)


def test_presets_are_the_originals_five_prompts_with_the_identity_placeholder():
    originals = yaml.safe_load((ROOT / "configs/sample/example.yaml").read_text())["prompts"][:5]
    assert len(forms.PRESET_PROMPTS) == 5
    for preset, original in zip(forms.PRESET_PROMPTS, originals):
        text = original if isinstance(original, str) else original["prompt"]
        for name in ("embedding:altman man", "embedding:scarlett woman"):
            text = text.replace(name, "{id}")
        assert preset == text


# -- the app's runs against the CLIs (tiny bundle, no browser) ---------------------------------------------------


def test_app_runs_reproduce_with_sample_py_and_keep_the_pipeline(app_configs, tmp_path):
    from magicme.webapp.ui import App

    app = App(str(app_configs[0]), str(app_configs[1]))
    runs = []
    for seed in (3, 4):
        *_, (status, first, face, tiled, files) = app.generate("T2V", form(seed=seed, steps=2))
        assert status.startswith("done in") and face is None and tiled is None
        runs.append(Path(first).parent)
        assert sorted(Path(f).name for f in files) == sorted(["config.yaml", Path(first).name])
    assert app.cache.loads == 1  # the second click reused the loaded pipeline
    assert sample.main(["--config", str(runs[1] / "config.yaml"), "--quiet", "--run-dir", str(tmp_path / "cli")]) == 0
    (record,) = [json.loads(line) for line in (runs[1] / "samples.jsonl").read_text().splitlines()]
    again = read_video(tmp_path / "cli" / record["files"]["gif"])
    assert again.shape == (8, 48, 64, 3) and np.array_equal(read_video(runs[1] / record["files"]["gif"]), again)
    (other,) = [json.loads(line) for line in (runs[0] / "samples.jsonl").read_text().splitlines()]
    assert other["seed"] == 3 and not np.array_equal(read_video(runs[0] / other["files"]["gif"]), again)


def test_app_reports_bad_input_in_the_status_line(app_configs, tmp_path):
    from magicme.webapp.ui import App

    app = App(str(app_configs[0]), str(app_configs[1]))
    *_, (status, *videos, files) = app.generate("T2V", form(identity=forms.NO_IDENTITY,
                                                           prompt="a photo of embedding:nobody man"))
    assert status.startswith("error: ") and "'nobody'" in status and "Traceback" not in status
    assert videos == [None, None, None] and files is None and not (tmp_path / "out").exists()
    (status, _, _, _, _), = list(app.train([], "ann", "woman", 2, resume=False))
    assert status == "error: photos: none uploaded; upload 5-10 photos of the person"
    (status, _, _, _, _), = list(app.train([], "ann", "woman", 2, resume=True))
    assert status == "error: name: no earlier training of 'ann' to resume; press Train"
    long_clip = tmp_path / "long.mp4"
    from magicme.video_io import write_mp4

    write_mp4(long_clip, np.zeros((24, 32, 32, 3), np.uint8), fps=8)
    app.max_clip_seconds = 2.0
    *_, (status, *_rest) = app.edit(form(), str(long_clip), 0.5)
    assert status == "error: video: long.mp4 is 3.0 s long (24 frames); this app edits clips up to 2 s; trim it"


def test_training_is_cancelled_then_resumed_and_the_identity_appears(app_configs, tmp_path):
    from magicme.webapp.ui import App

    app = App(str(app_configs[0]), str(app_configs[1]))
    photos = [str(p) for p in write_photos(tmp_path / "upload", 3)]
    status, gallery = app.masks(photos, "ann", "woman", 2)
    assert status.startswith("3 of 3 photos have a 'person' mask") and len(gallery) == 3
    assert all(Path(path).is_file() for path, _ in gallery)
    updates = []
    for update in app.train(photos, "ann", "woman", 2, resume=False):
        updates.append(update)
        if update[0] == "training ann: loading models…":
            app.cancel()  # pressed while the models load: training stops after its first step
    assert updates[-1][0] == "cancelled after step 1; Resume continues from step 1"
    assert "ann" not in app.identity_choices()
    *_, (status, curve, video, choices, _) = app.train(None, "ann", "woman", 2, resume=True)
    assert status.startswith("resumed ann: 2 steps, final loss") and "now in the identity lists" in status
    assert list(curve["step"]) == [1, 2] and Path(video).name.endswith(".mp4") and "step-2" in video
    assert "ann" in choices["choices"] and choices["value"] == "ann"
    assert (Path(app.embeddings_dir) / "ann.pt").is_file()
    (status, *_), = list(app.train(photos, "ann", "woman", 2, resume=False))
    assert status.startswith("error: name: the identity 'ann' already exists")


# -- the page in a real browser ----------------------------------------------------------------------------------


def chromium() -> str:
    """The system's Chromium (installed by scripts/setup_env.sh); a skip where none could be installed, a failure
    where CI requires the browser test (MAGICME_REQUIRE_BROWSER=1)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[test]')"
    if path is None:
        problem = "no chromium executable (apt-get install chromium; scripts/setup_env.sh does it where it can)"
    if problem and os.environ.get("MAGICME_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required (MAGICME_REQUIRE_BROWSER=1) but {problem}")
    if problem:
        pytest.skip(f"browser test skipped: {problem}")
    return path


def test_a_missing_browser_skips_here_and_fails_where_ci_requires_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("MAGICME_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="browser test skipped: no chromium executable"):
        chromium()
    monkeypatch.setenv("MAGICME_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="browser test required"):
        chromium()


def test_the_app_listens_on_this_machine_only_unless_asked():
    import app

    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.config) == ("127.0.0.1", 7860, False,
                                                              "configs/sample/example.yaml")
    assert app.parse_args(["--host", "0.0.0.0", "--share"]).share is True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_app(app_configs, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--config", str(app_configs[0]),
                               "--train-config", str(app_configs[1]), "--port", str(port)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError("the app did not start:\n" + (tmp_path / "server.log").read_text())
                time.sleep(0.5)
        yield url, tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def status_of(page, elem_id: str) -> str:
    return page.input_value(f"#{elem_id} textarea")


def wait_status(page, elem_id: str, prefix: str, timeout_s: float = 60):
    page.wait_for_function(
        "([id, prefix]) => { const t = document.querySelector(`#${id} textarea`); "
        "return t && (t.value.startsWith(prefix) || t.value.startsWith('error')); }",
        arg=[elem_id, prefix], timeout=timeout_s * 1000)
    assert status_of(page, elem_id).startswith(prefix), status_of(page, elem_id)


def served_frames(url: str, tmp_path: Path) -> int:
    """Frames of a video as the server sends it to the browser."""
    path = tmp_path / f"served-{abs(hash(url))}.mp4"
    path.write_bytes(urllib.request.urlopen(url, timeout=10).read())
    return len(read_video(path))


def test_browser_generate_with_face_then_train_an_identity(served_app):
    chromium_path = chromium()
    from playwright.sync_api import sync_playwright

    url, tmp_path = served_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
        page.goto(url)
        page.locator("#gen-identity input").click()
        page.get_by_role("option", name="tinyperson").click()
        page.click("#gen-face")
        wait_status(page, "gen-status", "done in")
        sources = [page.get_attribute(f"#gen-video-{box} video", "src") for box in ("first", "face")]
        assert all(sources) and page.locator("#gen-video-tiled video").count() == 0
        assert [served_frames(src, tmp_path) for src in sources] == [8, 8]
        run = Path(status_of(page, "gen-status").split(": ", 1)[1].split(" (")[0])
        assert [r["stage"] for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines())] == \
            ["t2v", "face"]
        page.screenshot(path=ARTIFACTS / "generate.png", full_page=True)

        page.get_by_role("tab", name="Train an identity").click()
        page.locator("#train-photos input[type=file]").set_input_files(
            [str(p) for p in write_photos(tmp_path / "photos", 3)])
        page.wait_for_selector('#train-photos td[aria-label="photo2.png"]')
        page.fill("#train-name textarea", "newperson")
        page.fill("#train-steps input", "2")
        page.click("#train-masks")
        wait_status(page, "train-status", "3 of 3 photos")
        assert page.locator("#train-mask-gallery img").count() == 3
        page.screenshot(path=ARTIFACTS / "masks.png", full_page=True)
        page.click("#train-start")
        wait_status(page, "train-status", "trained newperson: 2 steps")
        page.wait_for_selector("#train-validation video")
        page.screenshot(path=ARTIFACTS / "trained.png", full_page=True)

        page.get_by_role("tab", name="Generate").click()
        page.locator("#gen-identity input").click()
        assert page.get_by_role("option", name="newperson").count() == 1
        page.screenshot(path=ARTIFACTS / "new-identity.png", full_page=True)
        browser.close()
    assert outside == []  # the page fetched nothing from outside the app (no CDN, no fonts)


def test_edit_tab_rerenders_an_uploaded_clip(app_configs, tmp_path):
    from magicme.video_io import write_mp4
    from magicme.webapp.ui import App

    clip = tmp_path / "clip.mp4"
    write_mp4(clip, np.full((10, 48, 64, 3), 128, np.uint8), fps=8)
    app = App(str(app_configs[0]), str(app_configs[1]))
    *_, (status, edited, face, tiled, files) = app.edit(form(), str(clip), 0.5)
    assert status.startswith("done in") and face is None and tiled is None
    run = Path(edited).parent
    (record,) = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert record["stage"] == "edit" and record["frames"] == 8
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["input_video"] == str(clip) and saved["input_strength"] == 0.5


def test_app_says_what_it_is_doing_while_it_starts(app_configs, monkeypatch, capsys):
    """Every start-up step is announced on stderr before it runs, gradio's own hint (which names `share=True`, not
    our --share) is silenced, and the last line names the address and the --share flag."""
    import app
    from magicme.webapp import ui

    calls = {}

    class Page:
        share_url = None

        def queue(self):
            return self

        def launch(self, **kwargs):
            calls["launch"] = kwargs

        def block_thread(self):
            calls["blocked"] = True

    monkeypatch.setattr(ui, "build_ui", lambda built: Page())
    assert app.main(["--config", str(app_configs[0]), "--train-config", str(app_configs[1]), "--port", "7999"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("app: ")]
    assert [line.split(" ")[1] for line in lines] == ["importing", "checking", "building", "starting", "open"]
    assert lines[-1].startswith("app: open http://127.0.0.1:7999/") and "python app.py --share" in lines[-1]
    assert calls["launch"]["quiet"] is True and calls["launch"]["share"] is False and calls["blocked"]
