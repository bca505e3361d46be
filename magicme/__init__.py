"""magicme: identity-specific video generation (Magic-Me / Video Custom Diffusion) on current diffusers."""

__version__ = "0.1.0"
