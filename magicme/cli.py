"""What every command-line entry point shares."""

import logging
import os


def quiet_libraries() -> None:
    """Keep library chatter (torchvision fallbacks, weight-loading bars) out of the CLI's output; errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
