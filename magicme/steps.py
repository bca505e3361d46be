"""How many denoising steps a partial denoise runs (import-light: stages check their settings with it)."""


def denoising_steps(strength: float, steps: int) -> int:
    """How many of `steps` a partial denoise at `strength` runs: round(strength · steps)."""
    return min(steps, max(0, round(strength * steps)))
