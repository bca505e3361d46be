"""ControlNet conditioning of the first stage (t2v, edit): `control:` in a sampling config (docs/control.md).

- `settings`: the `control:` entries, checked before any model loads (import-light: no torch);
- `canny`: the canny preprocessor (`type: canny, from: input_video`), numpy, OpenCV's edges;
- `inputs`: a first stage's control videos (read or extracted before models load) and ControlNets (loaded after);
- `nets`: the UNet wrapper adding diffusers ControlNet residuals to the frames being denoised.
"""
