"""The kinds of output file an image gets, registered in one place (:data:`OUTPUT_KINDS`).

A kind says how its files are named (``pattern``, filled with the image's ``stem`` and, per method, the
``method``), which option asks for it (``wanted``: None for always, else ``guided``, ``save_maps``...), and
its file format (``format``: a fixed one such as ``npy``, or None for the figures' ``--format``); the format
says how it is encoded and when a file of it is whole (:mod:`campp_cli.io.formats`).  The figures drawn,
the files written, ``--skip-existing``, the collision checks, the notebook's result and ``classify --help``
all read this table.

A kind's *key* is its file name with the stem left out: ``""`` for the comparison, ``"_gradcam_heatmap"``
for a figure (whose suffix is the figures' format's), ``"_gradcam.npy"`` for a file of a fixed format.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..io.formats import FILE_FORMATS
from ..registry import Registry


@dataclass(frozen=True)
class OutputKind:
    name: str
    pattern: str  # "{stem}_{method}_heatmap": the file name without its suffix
    help: str
    wanted: str | None = None  # the option that asks for it (an Options field); None: always
    format: str | None = None  # a fixed file format; None: the figures' format (--format)
    together: bool = False  # per-method kinds registered in a row with together=True are listed method by method
    of: str = "image"  # "image": beside each photo's outputs, named by its stem; "report": the report's, by slot

    @property
    def per_method(self) -> bool:
        return "{method}" in self.pattern

    def key(self, method: str | None = None) -> str:
        suffix = FILE_FORMATS.get(self.format).suffixes[0] if self.format else ""
        return self.pattern.format(stem="", slot="", method=method) + suffix


def _check(name: str, kind: OutputKind) -> None:
    start = "{stem}" if kind.of == "image" else "{slot}"
    if kind.of not in ("image", "report") or not kind.pattern.startswith(start):
        raise ValueError(f"output kind {name!r}: a pattern of an {kind.of!r} output starts with {start}, not "
                         f"{kind.pattern!r}")
    if kind.format is not None:
        FILE_FORMATS.get(kind.format)


#: Every kind of file an image gets, in the order they are written and listed.
OUTPUT_KINDS: Registry[OutputKind] = Registry("output kind", check=_check)


def register_output_kind(name: str, pattern: str, help: str, wanted: str | None = None, format: str | None = None,
                         together: bool = False, of: str = "image", replace: bool = False) -> OutputKind:
    return OUTPUT_KINDS.register(name, OutputKind(name, pattern, help, wanted, format, together, of),
                                 replace=replace)


register_output_kind("comparison", "{stem}", "the input and one panel per method")
register_output_kind("heatmap", "{stem}_{method}_heatmap", "JET heatmap of the method's map", together=True)
register_output_kind("overlay", "{stem}_{method}_overlay", "heatmap blended over the input", together=True)
register_output_kind("guided", "{stem}_guided_{method}", "the method's guided map", wanted="guided")
register_output_kind("map", "{stem}_{method}", "the method's low-resolution map", wanted="save_maps", format="npy")
# The --report's images of each card, in FILE_files/ (the page builds their addresses from these patterns).
register_output_kind("report_thumb", "{slot}_thumb", "the comparison figure, 120 px high", format="jpeg",
                     of="report")
register_output_kind("report_photo", "{slot}_photo", "the photo at panel size", format="jpeg", of="report")
register_output_kind("report_heatmap", "{slot}_heatmap_{method}", "the method's heatmap", format="jpeg",
                     of="report")


def image_kinds() -> list[OutputKind]:
    return [k for k in OUTPUT_KINDS if k.of == "image"]


def report_asset(kind: str, slot: int, method: str | None = None) -> str:
    """The file name of a report image of ``kind`` (``report_thumb``...) for the card in ``slot``."""
    entry = OUTPUT_KINDS.get(kind)
    return entry.pattern.format(slot=f"{slot:06d}", method=method) + FILE_FORMATS.get(entry.format).suffixes[0]


def report_patterns() -> dict[str, str]:
    """{kind: its file name pattern}, for the page's script."""
    return {k.name: k.pattern + FILE_FORMATS.get(k.format).suffixes[0] for k in OUTPUT_KINDS if k.of == "report"}


def key(kind: str, method: str | None = None) -> str:
    """The key of ``kind``'s file (for ``method``)."""
    return OUTPUT_KINDS.get(kind).key(method)


def keys(methods, **wanted: bool) -> list[str]:
    """The keys of every file an image gets for ``methods``, in order; ``wanted``: the options that ask for
    more kinds (``guided=True``, ``save_maps=True``)."""
    out: list[str] = []
    kinds = [k for k in image_kinds() if k.wanted is None or wanted.get(k.wanted)]
    i = 0
    while i < len(kinds):
        kind = kinds[i]
        if not kind.per_method:
            out.append(kind.key())
            i += 1
            continue
        run = [kind]
        while kind.together and i + len(run) < len(kinds) and kinds[i + len(run)].together:
            run.append(kinds[i + len(run)])
        out += [k.key(m) for m in methods for k in run]
        i += len(run)
    twice = sorted({k for k in out if out.count(k) > 1})
    if twice:
        raise UsageError(f"two of these methods' files would have one name (NAME{twice[0]}...): rename one of the "
                         f"methods", param="methods", value=",".join(methods))
    return out


def encode(key_: str, array, figure_format: str) -> bytes:
    """The bytes of ``key_``'s file: a figure in ``figure_format``, a file of a fixed format in its own (its key
    ends with that format's suffix)."""
    from ..io.formats import of_suffix

    fixed = of_suffix("." + key_.rsplit(".", 1)[1]) if "." in key_ else None
    return (fixed or FILE_FORMATS.get(figure_format)).encode(array)


def file_list(stem: str = "NAME", method: str = "METHOD", suffix: str = ".jpeg") -> list[tuple[str, str]]:
    """(file name, what it holds[, with the option]) for ``classify --help``, from the table."""
    rows = []
    for kind in image_kinds():
        name = kind.pattern.format(stem=stem, method=method) + (
            FILE_FORMATS.get(kind.format).suffixes[0] if kind.format else suffix)
        rows.append((name, kind.help + (f" (with --{kind.wanted.replace('_', '-')})" if kind.wanted else "")))
    return rows
