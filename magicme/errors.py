"""The one exception type for mistakes a user can fix (bad config key, missing file, wrong format)."""


class ConfigError(Exception):
    """Raised for bad user input; CLIs print its message on one line and exit with status 2.

    The message names the config key or file, says what is wrong and what to do.
    """
