"""Errors that carry a message meant for the user, not a traceback."""


class MmragError(Exception):
    """Base class: the message names the problem and, where possible, the fix."""


class ConfigError(MmragError):
    """Settings, model ids or paths that cannot work."""


class ExtractionError(MmragError):
    """A file that cannot be read: corrupt, truncated, encrypted, too large, unsupported."""


class ModelMismatchError(MmragError):
    """An index built with one model opened with another."""


class IndexCorruptError(MmragError):
    """An index file that cannot be loaded or does not match its manifest."""
