"""Exceptions the library raises for problems a user can fix.

Every error that comes from the user's input (a corrupt file, an unreadable image, a bad model
directory, a wrong option) is an :class:`OscarError`; the CLI prints those as one line without a
traceback. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class OscarError(Exception):
    """Base class of all errors caused by input the user can correct."""


class ConfigError(OscarError, ValueError):
    """A configuration file or value is invalid."""


class ModelError(OscarError):
    """A model directory is missing files, holds wrong shapes or non-finite weights."""


class ImageError(OscarError):
    """An input image cannot be read or is refused by the input policy."""


class OutputExistsError(OscarError):
    """An output file exists and overwriting was not allowed."""


class OutputError(OscarError):
    """An output cannot be written (folder not writable, disk full, ...); nothing was left."""


class BitstreamError(OscarError, ValueError):
    """Base class of every error raised while reading a compressed file."""


class TruncatedError(BitstreamError):
    """The data ends before the structure it announces."""


class BadMagicError(BitstreamError):
    """The data does not start with the OSCAR magic bytes."""


class UnsupportedVersionError(BitstreamError):
    """The format version is not one this build can read."""


class ChecksumError(BitstreamError):
    """The CRC-32 stored in the file does not match its contents."""


class MalformedError(BitstreamError):
    """A header field or the payload holds a value the format does not allow."""


class LimitExceededError(BitstreamError):
    """A header field asks for more pixels or bytes than the configured limits allow."""


class FingerprintMismatchError(BitstreamError):
    """The file was made with a different model than the one given to decode it."""
