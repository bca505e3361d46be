"""The page: three tabs over the package — Generate, Train an identity, Edit a clip.

Every handler turns its form into a config (magicme/webapp/forms.py), runs it with the CLIs' own code
(magicme/webapp/jobs.py) and reports into its tab's status box: a `ConfigError` as its one line, anything else as
one line naming the exception (the traceback goes to the server's log, never to the page). GPU work shares one
queue slot (`GPU`), so one job runs at a time; Cancel bypasses the queue.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
from omegaconf import DictConfig

from magicme.errors import ConfigError
from magicme.schema import load_sample_config
from magicme.training.config import load_train_config, validate_train_config
from magicme.webapp import forms, jobs

log = logging.getLogger("magicme.app")
GPU = "gpu"  # the concurrency group of every event that runs a model
STAGE_LABELS = {"first": "T2V / edit", "face": "Face VCD", "tiled": "Tiled VCD"}  # one video box each
DEFAULT_MAX_CLIP_SECONDS = 60.0


def message(err: BaseException) -> str:
    """The one line the page shows for a failure."""
    if isinstance(err, ConfigError):
        return f"error: {err}"
    if isinstance(err, jobs.TrainingCancelled):
        return f"{err}"
    log.error("unexpected error", exc_info=err)
    return f"error: {type(err).__name__}: {err} (details in the app's terminal)"


@dataclass
class App:
    """What the handlers share: the configs the app was started with, the kept pipeline, the training job."""

    config_path: str
    train_config_path: str
    max_clip_seconds: float = DEFAULT_MAX_CLIP_SECONDS
    cache: jobs.PipelineCache = field(default_factory=jobs.PipelineCache)
    training: jobs.TrainingJob = field(default_factory=jobs.TrainingJob)

    def __post_init__(self):
        self.base: DictConfig = load_sample_config(self.config_path)  # a broken config stops the app at start
        self.train_base: DictConfig = load_train_config(self.train_config_path)

    @property
    def embeddings_dir(self) -> str | None:
        return self.base.model.embeddings_dir

    def served_folders(self) -> list[str]:
        """Where the page's files live (the only folders the server may send files from)."""
        return [str(Path(self.base.output_dir).resolve()), str(Path(self.train_base.output_dir).resolve())]

    def identity_choices(self) -> list[str]:
        return [forms.NO_IDENTITY, *jobs.identities(self.embeddings_dir)]

    def photo_folder(self, name: str) -> Path:
        return Path(self.train_base.output_dir) / "photos" / name

    # -- Generate / Edit -------------------------------------------------------------------------------------------

    def render(self, cfg_of):
        """Shared by Generate and Edit: (status, stage videos, files) as the run goes."""
        empty = (None,) * len(STAGE_LABELS)
        try:
            cfg = cfg_of()
        except ConfigError as err:
            yield (message(err), *empty, None)
            return
        yield ("starting…", *empty, None)
        for update in jobs.render(cfg, self.cache):
            by_stage = {("first" if v.stage in ("t2v", "edit") else v.stage): str(v.path) for v in update.videos}
            videos = [by_stage.get(stage) for stage in STAGE_LABELS]
            if update.error is not None:
                status = message(update.error)
            elif update.finished:
                status = (f"done in {update.seconds:.1f} s: {update.run_dir} "
                          f"(python sample.py --config {update.run_dir / 'config.yaml'} reproduces it)")
            else:
                status = f"rendering… {', '.join(v.stage for v in update.videos)} done after {update.seconds:.1f} s"
            files = [str(update.run_dir / "config.yaml")] + [str(v.path) for v in update.videos] \
                if update.finished else None
            yield (status, *videos, files)

    def generate(self, button: str, form: forms.VideoForm):
        yield from self.render(lambda: forms.generate_config(self.config_path, form, button))

    def edit(self, form: forms.VideoForm, video: str | None, strength):
        def config():
            cfg = forms.edit_config(self.config_path, form, video, strength)
            frames, seconds = jobs.clip_length(video)
            forms.check_clip_length(frames, seconds, video, self.max_clip_seconds)
            return cfg

        yield from self.render(config)

    # -- Train -----------------------------------------------------------------------------------------------------

    def train_config(self, photos, name, class_word, steps, resume: bool):
        """The checked training config and decoded photos. A new training stores the uploads as the identity's
        photo folder once every one of them decodes (an earlier upload there is moved aside, never deleted); a
        resumed one reads that folder again."""
        name = forms.check_identity_name(name)
        folder = self.photo_folder(name)
        if resume:
            if not folder.is_dir():
                raise ConfigError(f"name: no earlier training of {name!r} to resume; press Train")
        else:
            if name in jobs.identities(self.embeddings_dir):
                raise ConfigError(f"name: the identity {name!r} already exists in {self.embeddings_dir}; choose "
                                  "another name")
            forms.store_photos(forms.check_photos(photos), folder)
        cfg = load_train_config(self.train_config_path,
                                forms.train_overrides(name, class_word, steps, folder, self.embeddings_dir))
        return cfg, validate_train_config(cfg)

    def masks(self, photos, name, class_word, steps):
        """The CLIPSeg person masks training will use (cached: training reads them back), as overlays."""
        from magicme.devices import resolve_device
        from magicme.segmentation import ClipSegSegmenter, model_identity
        from magicme.training.data import load_training_images, save_overlays, working_size

        try:
            cfg, decoded = self.train_config(photos, name, class_word, steps, resume=False)
            images = load_training_images(
                decoded, lambda: ClipSegSegmenter(cfg.model.clipseg, device=resolve_device("auto")),
                model_identity(cfg.model.clipseg), cfg.mask_prompt, cfg.mask_threshold, Path(cfg.mask_cache_dir),
                working_size(cfg.resolution))
        except Exception as err:  # noqa: BLE001 - every failure becomes the status line
            return message(err), None
        overlays = Path(str(self.photo_folder(cfg.name)) + ".masks")
        save_overlays(overlays, images)
        kept = {image.path for image in images}
        skipped = [p.path.name for p in decoded if p.path not in kept]
        note = forms.photo_advice(len(decoded))
        status = (f"{len(images)} of {len(decoded)} photos have a {cfg.mask_prompt!r} mask"
                  + (f"; skipped (none found): {', '.join(skipped)}" if skipped else "") + (f". {note}" if note else ""))
        return status, [(str(overlays / f"{p.stem}.png"), p.name) for p in sorted(kept)]

    def train(self, photos, name, class_word, steps, resume: bool):
        """Train (or resume) an identity: status, loss curve, newest validation video, both identity dropdowns."""
        from magicme.training.identities import Job, train_identities

        keep = gr.update()
        try:
            cfg, decoded = self.train_config(photos, name, class_word, steps, resume)
        except Exception as err:  # noqa: BLE001
            yield message(err), None, None, keep, keep
            return
        job = Job(cfg, decoded)
        self.training.cancel.clear()  # a Cancel from here on stops this training
        yield f"training {cfg.name}: loading models…", None, None, keep, keep
        for update in self.training.run(lambda hook: train_identities([job], resume="auto" if resume else None,
                                                                      progress=True, on_step=hook)):
            curve = pd.DataFrame({"step": range(1, len(update.losses) + 1), "loss": update.losses})
            videos = jobs.validation_videos(update.run_dir)
            video = str(videos[0]) if videos else None
            if update.error is not None:
                yield message(update.error) + resume_hint(update), curve, video, keep, keep
            elif update.outcome is not None:
                outcome = update.outcome[0]
                choices = gr.update(choices=self.identity_choices(), value=cfg.name)
                yield (f"{outcome.status} {cfg.name}: {outcome.steps} steps, final loss "
                       f"{outcome.final_loss if outcome.final_loss is None else round(outcome.final_loss, 5)}; "
                       f"{outcome.output} (now in the identity lists)", curve, video, choices, choices)
            else:
                yield f"training {cfg.name}: step {update.step} of {cfg.max_steps}, loss {update.losses[-1]:.5f}", \
                    curve, video, keep, keep

    def cancel(self) -> str:
        self.training.cancel.set()
        return "cancelling after the current step…"


def resume_hint(update: jobs.TrainingUpdate) -> str:
    if update.run_dir is None:
        return ""
    from magicme.training.trainer import state_files

    states = state_files(update.run_dir)
    at = states[0][0] if states else 0
    return f"; Resume continues from step {at}" if states else "; no checkpoint yet: Resume starts again"


def build_ui(app: App) -> gr.Blocks:
    """The page. Components carry elem_ids (gen-*, train-*, edit-*) for the browser test."""
    base = app.base
    choices = app.identity_choices()
    first = choices[1] if len(choices) > 1 else forms.NO_IDENTITY
    known = jobs.identities(app.embeddings_dir)
    with gr.Blocks(title="magicme: Magic-Me identity videos", analytics_enabled=False) as page:
        gr.Markdown("# Magic-Me: identity-specific videos\nGenerate with an identity, train a new one from photos, "
                    "or edit a clip. Every result is a normal run folder; its config.yaml reproduces it with "
                    "`sample.py`.")
        with gr.Accordion("Video settings (Generate and Edit)", open=True):
            negative = gr.Textbox(base.negative_prompt, label="Negative prompt", elem_id="negative")
            with gr.Row():
                seed = gr.Number(base.seeds[0] if base.seeds[0] >= 0 else 42, label="Seed", precision=0,
                                 elem_id="seed")
                random_seed = gr.Checkbox(base.seeds[0] == -1, label="Random seed", elem_id="random-seed")
                steps = gr.Number(base.steps, label="Steps", precision=0, elem_id="steps")
                cfg_scale = gr.Number(base.guidance_scale, label="CFG (guidance scale)", elem_id="cfg")
                gamma = gr.Slider(0.0, 0.99, value=base.gamma, step=0.01, label="γ (3D noise prior)", elem_id="gamma")
            with gr.Row():
                frames = gr.Number(base.frames, label="Frames", precision=0, elem_id="frames")
                width = gr.Number(base.width, label="Width", precision=0, elem_id="width")
                height = gr.Number(base.height, label="Height", precision=0, elem_id="height")
        settings = [negative, seed, random_seed, steps, cfg_scale, gamma, frames, width, height]

        def video_form(identity, class_word, prompt, *values) -> forms.VideoForm:
            return forms.VideoForm(identity, class_word, prompt, *values)

        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    identity = gr.Dropdown(choices, value=first, label="Identity", elem_id="gen-identity")
                    class_word = gr.Textbox(known.get(first, ""), label="Class word", elem_id="gen-class-word")
                prompt = gr.Textbox(forms.PRESET_PROMPTS[0], label="Prompt ({id} = the identity)", lines=2,
                                    elem_id="gen-prompt")
                gr.Examples([[p] for p in forms.PRESET_PROMPTS], inputs=[prompt], label="The original's prompts")
                with gr.Row():
                    buttons = [gr.Button(label, variant="primary", elem_id=f"gen-{forms.BUTTONS[label][-1]}")
                               for label in forms.BUTTONS]
                gen_status = gr.Textbox(label="Status", interactive=False, elem_id="gen-status")
                with gr.Row():
                    gen_videos = [gr.Video(label=title, elem_id=f"gen-video-{stage}", interactive=False)
                                  for stage, title in STAGE_LABELS.items()]
                gen_files = gr.File(label="Download (config.yaml + videos)", file_count="multiple",
                                    elem_id="gen-files", interactive=False)
            with gr.Tab("Train an identity", id="train"):
                photos = gr.File(label="Photos (5-10)", file_count="multiple", file_types=["image"],
                                 elem_id="train-photos")
                with gr.Row():
                    name = gr.Textbox(label="Name (lower-case; used as embedding:NAME)", elem_id="train-name")
                    train_word = gr.Textbox(app.train_base.class_word, label="Class word", elem_id="train-class-word")
                    train_steps = gr.Number(app.train_base.max_steps, label="Steps", precision=0,
                                            elem_id="train-steps")
                with gr.Row():
                    masks_button = gr.Button("Show masks", elem_id="train-masks")
                    train_button = gr.Button("Train", variant="primary", elem_id="train-start")
                    resume_button = gr.Button("Resume", elem_id="train-resume")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                train_status = gr.Textbox(label="Status", interactive=False, elem_id="train-status")
                mask_gallery = gr.Gallery(label="CLIPSeg person masks (what the loss sees)", columns=5,
                                          elem_id="train-mask-gallery")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="step", y="loss", label="Loss", elem_id="train-loss")
                    validation = gr.Video(label="Newest validation video", elem_id="train-validation",
                                          interactive=False)
            with gr.Tab("Edit a clip", id="edit"):
                clip = gr.File(label="Clip (MP4 / GIF)", file_types=[".mp4", ".gif", ".webm", ".mov"],
                               elem_id="edit-clip")
                with gr.Row():
                    edit_identity = gr.Dropdown(choices, value=first, label="Identity", elem_id="edit-identity")
                    edit_word = gr.Textbox(known.get(first, ""), label="Class word", elem_id="edit-class-word")
                    strength = gr.Slider(0.0, 1.0, value=base.input_strength, step=0.05, label="Strength",
                                         elem_id="edit-strength")
                edit_prompt = gr.Textbox(f"a photo of {forms.ID_PLACEHOLDER}", label="Prompt", elem_id="edit-prompt")
                edit_button = gr.Button("Render", variant="primary", elem_id="edit-render")
                edit_status = gr.Textbox(label="Status", interactive=False, elem_id="edit-status")
                edit_video = gr.Video(label="Edited", elem_id="edit-video", interactive=False)
                edit_files = gr.File(label="Download", file_count="multiple", elem_id="edit-files",
                                     interactive=False)

        for label, button in zip(forms.BUTTONS, buttons):
            def on_click(identity_, word, prompt_, *values, label=label, progress=gr.Progress(track_tqdm=True)):
                yield from app.generate(label, video_form(identity_, word, prompt_, *values))

            button.click(on_click, [identity, class_word, prompt, *settings], [gen_status, *gen_videos, gen_files],
                         concurrency_id=GPU, concurrency_limit=1)

        def on_edit(clip_, identity_, word, prompt_, strength_, *values, progress=gr.Progress(track_tqdm=True)):
            for status, first_video, _, _, files in app.edit(video_form(identity_, word, prompt_, *values), clip_,
                                                             strength_):
                yield status, first_video, files

        edit_button.click(on_edit, [clip, edit_identity, edit_word, edit_prompt, strength, *settings],
                          [edit_status, edit_video, edit_files], concurrency_id=GPU, concurrency_limit=1)

        def on_masks(photos_, name_, word, steps_, progress=gr.Progress(track_tqdm=True)):
            return app.masks(photos_, name_, word, steps_)

        def trainer(resume: bool):
            def on_train(photos_, name_, word, steps_, progress=gr.Progress(track_tqdm=True)):
                yield from app.train(photos_, name_, word, steps_, resume)
            return on_train

        train_inputs = [photos, name, train_word, train_steps]
        masks_button.click(on_masks, train_inputs, [train_status, mask_gallery], concurrency_id=GPU,
                           concurrency_limit=1)
        for button, resume in ((train_button, False), (resume_button, True)):
            button.click(trainer(resume), train_inputs, [train_status, loss_plot, validation, identity, edit_identity],
                         concurrency_id=GPU, concurrency_limit=1)
        cancel_button.click(app.cancel, None, train_status, queue=False)

        def class_word_of(identity_):
            return jobs.identities(app.embeddings_dir).get(identity_, "")

        identity.change(class_word_of, identity, class_word, queue=False)
        edit_identity.change(class_word_of, edit_identity, edit_word, queue=False)

        def refreshed(current, current_edit):
            fresh = app.identity_choices()
            return gr.update(choices=fresh, value=current if current in fresh else first), \
                gr.update(choices=fresh, value=current_edit if current_edit in fresh else first)

        page.load(refreshed, [identity, edit_identity], [identity, edit_identity], queue=False)
    return page
