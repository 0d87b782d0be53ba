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


def suggest(name: str, choices, n: int = 1, cutoff: float = 0.5) -> str:
    """"; did you mean X?" (or "X or Y" for ``n`` > 1) for the choices closest to ``name``, or ""."""
    import difflib

    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=cutoff)
    if not close:
        return ""
    return f"; did you mean {', '.join(close[:-1]) + ' or ' if len(close) > 1 else ''}{close[-1]}?"


#: How a run stopped by a signal ends: the line and the exit code for ``how`` (SIGINT: ``"interrupted"``,
#: SIGTERM: ``"terminated"``), said the same by the CLI and by a caller whose run a daemon stopped.
ABORTED = {"interrupted": 130, "terminated": 143}


def aborted_line(how: str) -> str:
    return f"campp: aborted ({how}); every output file on disk is complete"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CamppError(Exception):
    """Base class: a failure with a message meant for the user.

    ``param`` names the parameter at fault as the library calls it (``methods``, ``label``) and ``value``
    the value given: the message reads ``"label 1001: out of range ..."`` from Python, and the CLI, which
    knows each parameter's flag, prints ``"-l 1001: out of range ..."`` (:meth:`worded`).

    A message may write parameters itself, each as ``{name}``: ``param``'s own and those listed in ``also``;
    one that starts with ``{param}`` (a sentence: "{output_dir} x is the folder given with {files} y") gets
    nothing put in front of it, ``value`` is then only kept.  :meth:`worded` fills each in as its flag, or as
    the library's name::

        UsageError("{jsonl} a.txt and {report} a.txt are the same file", param="jsonl", value="a.txt",
                   also=("report",))

    reads ``jsonl a.txt and report a.txt ...`` from Python and ``--jsonl a.txt and --report a.txt ...`` on
    the command line.  Only the names of ``param`` and ``also`` are filled in: other braces (``{stem}``)
    stay as written.
    """

    #: Process exit code the CLI uses for this error.
    exit_code = 1

    def __init__(self, message: str, *, param: str | None = None, value: object = None,
                 also: tuple[str, ...] = ()):
        self.text = message
        self.param = param
        self.value = value
        self.also = tuple(also)
        super().__init__(self.worded())

    def worded(self, flags: dict[str, str] | None = None) -> str:
        """The message, its parameters named by ``flags[name]`` (a flag) where given, else as the library's."""
        flags = flags or {}
        text = self.text
        for name in (self.param, *self.also) if self.param is not None else self.also:
            text = text.replace(f"{{{name}}}", flags.get(name, name))
        if self.param is None or self.text.startswith(f"{{{self.param}}}"):
            return text
        value = "" if self.value is None else f" {clip(self.value)}"
        return f"{flags.get(self.param, self.param)}{value}: {text}"

    @property
    def message(self) -> str:
        return self.worded()

    def __reduce__(self):  # an engine ships errors between processes: keep the parameter
        return _rebuild, (type(self), self.text, self.param, self.value, self.also)

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


class MemoryLimitError(CamppError):
    """A batch that does not fit in the device's memory (the GPU's, or the machine's for the CPU)."""


def _rebuild(cls, text: str, param: str | None, value: object, also: tuple[str, ...] = ()) -> CamppError:
    return cls(text, param=param, value=value, also=also)
