"""Typed errors whose message a person can act on.

The UI turns these into gr.Warning / gr.Error and the CLI prints the message as one
line on stderr with a non-zero exit. Anything that is not a VitdemoError is a bug.
"""

from __future__ import annotations


class VitdemoError(Exception):
    """Base class: `str(err)` is shown to the user as it is."""


class InputError(VitdemoError):
    """The user's request is malformed: empty message, too many images, bad setting."""


class ImageError(InputError):
    """A file that should be an image cannot be used as one."""


class DatasetError(InputError):
    """Fine-tune data cannot be used (format, archive, records)."""


class ModelLoadError(VitdemoError):
    """A model or processor cannot be loaded (wrong id, no network, unsupported)."""


class GenerationError(VitdemoError):
    """Generation failed (out of memory, stopped, internal error)."""


class BusyError(VitdemoError):
    """A shared resource is taken (training job running, queue full)."""


class UnsupportedModelError(VitdemoError):
    """A feature (attention maps, Learn sections) does not support the loaded model."""
