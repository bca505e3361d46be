"""Upper bounds of every size, count and upload a user sets: one place, so the checks, the page and the docs agree.

They are far above anything the models were made for and low enough that a typo (`width=1000000000`) is a clean
error before loading, not an overflow deep inside torch (docs/robustness.md lists them).
"""

MAX_SIZE = 4096  # px: width, height, face.size, tiled.tile, training resolution
MAX_FRAMES = 1024  # frames of a video (longer ones: several runs, or context windows over parts)
MAX_STEPS = 1000  # denoising steps (the schedulers' 1000 training timesteps)
MAX_FPS = 240
MAX_TRAIN_STEPS = 1_000_000  # training's max_steps
MAX_UPLOAD_MB = 50  # one file uploaded on the page (a photo or a clip)
