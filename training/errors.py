"""The project's error base: a message a user can act on, shown without a traceback."""


class StylepipeError(Exception):
    """An expected failure (bad input, bad config, missing weights) with an actionable message."""


class ConfigError(StylepipeError, ValueError):
    """A config value that cannot work; the message names the key and the allowed values."""


class Interrupted(StylepipeError):
    """Ctrl-C: the work so far is saved; the message says where, and how to go on."""
