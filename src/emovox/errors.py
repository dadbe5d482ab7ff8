"""Errors a user can cause.

Every exception raised for bad input derives from :class:`EmovoxError`. The CLI and the web
service catch it and show its message (which always names the offending input) instead of a
traceback; anything else is a bug.
"""

from __future__ import annotations


class EmovoxError(Exception):
    """Base class for user-facing errors: the message names the input and says what is wrong."""


class AudioError(EmovoxError):
    """A file or array that cannot be used as speech audio (missing, not audio, empty, NaN, too short)."""


class CorpusError(EmovoxError):
    """A folder or manifest that does not match the expected corpus layout, or an unknown label."""


class ConfigError(EmovoxError):
    """A configuration file or override that is missing, malformed or has invalid values."""


class BundleError(EmovoxError):
    """A model bundle that is missing, incomplete, corrupted or from an incompatible version."""
