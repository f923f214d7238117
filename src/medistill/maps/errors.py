"""The error of explanations and their maps (torch-free, so that ``explain``'s options and the CLI can raise it
without torch)."""

from __future__ import annotations

from ..errors import MedistillError


class ExplainError(MedistillError):
    """An explanation request does not fit the model or the images; the message names the value."""
