"""Errors a user can cause, each carrying the one line campp prints for it.

The CLI turns any :class:`CamppError` into ``campp: error: <message>`` on
stderr and exits with :attr:`CamppError.exit_code`; nothing else in the
package prints or exits.  Library users (notebooks) simply catch them.
"""

from __future__ import annotations

#: Longest value (a name, a key, a line of a file) echoed in a message; longer ones are cut with an ellipsis.
ECHO_LIMIT = 200


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text, at most about ``limit`` characters: a longer one keeps its start and end around
    an ellipsis, so a 10 MB key or line never makes a 10 MB message."""
    text = str(value)
    if len(text) <= limit:
        return text
    head = max(1, limit * 2 // 3)
    return f"{text[:head]}…{text[-max(1, limit - head - 1):]}"


class CamppError(Exception):
    """Base class: a failure with a message meant for the user."""

    #: Process exit code the CLI uses for this error.
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CamppError):
    """Bad arguments: wrong class index, unknown device, unsafe output name..."""

    exit_code = 2


class InputError(CamppError):
    """An input image that cannot be read or explained."""


class WeightsError(CamppError):
    """Model weights that cannot be found, read, trusted or fitted."""


class OutputError(CamppError):
    """An output folder or file that cannot be written."""


class ModelError(CamppError):
    """The model misbehaves at run time (for example non-finite logits)."""
