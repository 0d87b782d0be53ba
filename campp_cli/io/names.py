"""Output names: ``-o`` and its templates, the files a job writes, and the checks, before any work, that
no two outputs are one file and no output replaces an input.

A disk that ignores case and Unicode normalisation (:func:`folds_case`) is seen as it sees names.
Nothing here imports torch.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import stat
import string
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError, clip
from ..settings import FORMATS

if TYPE_CHECKING:
    from .inputs import Job

#: Longest file or folder name most filesystems take (bytes).
NAME_MAX = 255


def format_of(suffix: str) -> str | None:
    """The --format a file suffix names ("jpeg", "png"), or None."""
    return next((f for f, suffixes in FORMATS.items() if suffix.lower() in suffixes), None)


#: The parameters :func:`output_stem`'s messages name: the name, its folder and its format (a run's; the
#: CLI writes them as ``-o``, ``--output-dir`` and ``--format``).
RUN_NAMES = ("output", "output_dir", "format")


def output_stem(name: str, fmt: str | None = None, names: tuple[str, str, str] = RUN_NAMES) -> tuple[str, str]:
    """Split and check ``-o``: a plain JPEG or PNG file name, never a path; ``fmt`` (--format) names the
    format when the name has no suffix, and must agree with one it has.  ``names``: the parameters errors
    name for the name, the folder and the format (:data:`RUN_NAMES`; the notebook's own elsewhere)."""
    option, folder, fmt_option = names
    shown = repr(clip(name))
    if not name or "/" in name or "\\" in name or os.sep in name or name in (".", ".."):
        raise UsageError(f"give a file name without folders (use {{{folder}}} for the folder)", param=option,
                         value=shown, also=(folder,))
    if ".." in name:
        raise UsageError("'..' is not allowed in output names", param=option, value=shown)
    stem, suffix = os.path.splitext(name)
    if not suffix:
        suffix = FORMATS[fmt or "jpeg"][0]
    if format_of(suffix) is None or not stem or stem.startswith("."):
        raise UsageError("the output must be a JPEG or PNG file name such as out.jpeg or out.png", param=option,
                         value=shown)
    if fmt is not None and format_of(suffix) != fmt:
        raise UsageError(f"{{{option}}} {shown} names a {format_of(suffix).upper()} file but {{{fmt_option}}} is "
                         f"{fmt}: give {stem}{FORMATS[fmt][0]}, or leave one of them out", param=option, value=shown,
                         also=(fmt_option,))
    return stem, suffix


def check_template(template: str, fmt: str | None = None) -> None:
    """``-o`` for several inputs: a file-name template whose only field is a plain ``{stem}`` (no format
    spec, no conversion: ``{stem:>9}`` or ``{stem!r}`` is refused)."""
    shown = repr(clip(template))
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError:
        raise UsageError("not a valid template (unbalanced braces?)", param="output", value=shown) from None
    if any(f != "stem" for f, _, _ in fields):
        raise UsageError("the only field a template may use is {stem}", param="output", value=shown)
    if any(spec or conv for _, spec, conv in fields):
        raise UsageError("write {stem} as it is, without a format spec or conversion (':...' or '!...')",
                         param="output", value=shown)
    if not fields:
        raise UsageError("with several inputs, {output} must be a template containing {stem} (the input's name), "
                         "such as {stem}.jpeg", param="output", value=shown)
    output_stem(fill(template, "x"), fmt)


def fill(template: str, stem: str) -> str:
    """A template checked by :func:`check_template`, with ``stem`` for every ``{stem}``."""
    return template.format(stem=stem)


def check_name_length(param: str, path: str | os.PathLike) -> None:
    """A usage error if a folder or file name in ``path`` is longer than filesystems allow (255 bytes):
    ``param`` is the parameter that gave it (``files``, ``jsonl``...)."""
    raw = os.fsencode(path)
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            shown = clip(os.fsdecode(part))
            raise UsageError(f"the name {shown!r} is {len(part)} bytes long; file and folder names are at most "
                             f"{NAME_MAX} bytes", param=param)


def file_identity(path: Path) -> tuple:
    """What makes two paths the same file: device and inode, or the resolved path if it cannot be read."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return (os.path.realpath(path),)


#: What a derived name may not contain: folder separators and control characters.
_UNSAFE = re.compile(r"[\\/\x00-\x1f\x7f]")


def safe_stem(path: Path) -> str:
    """A file name stem made from an input's, safe whatever that name was: no separators, no '..',
    no leading or trailing dots, no control characters, at most 150 bytes."""
    stem = _UNSAFE.sub("_", path.stem or path.name)
    while ".." in stem:
        stem = stem.replace("..", "_")
    stem = stem.strip(". ") or "image"
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) > 150:  # leave room for "_gradcam_elementwise_heatmap.jpeg" and a counter
        stem = raw[:150].decode("utf-8", "ignore").rstrip(". ") or "image"
    return stem


def check_output_name(output: str | None, stem: str, suffix: str, keys: list[str]) -> None:
    """A usage error when ``-o`` makes a file name longer than filesystems allow (with the longest key, and
    for a template the longest stem, 150 bytes, and a counter)."""
    longest = max((name_of(stem, suffix, key) for key in keys), key=lambda n: len(n.encode("utf-8", "surrogateescape")))
    size = len(longest.encode("utf-8", "surrogateescape")) + (0 if output is None or "{" not in output else 8)
    if size > NAME_MAX:
        raise UsageError(f"makes file names of up to {size} bytes (such as {clip(longest, 80)!r}); file names are "
                         f"at most {NAME_MAX} bytes", param="output", value=repr(clip(output)))


def name_of(stem: str, suffix: str, key: str) -> str:
    """The file name for an output key (:mod:`campp_cli.outputs.kinds`): a figure's ("", "_gradcam_heatmap")
    takes the figures' ``suffix``; a key with a suffix of its own ("_gradcam.npy") keeps it."""
    return f"{stem}{key}" if "." in key else f"{stem}{key}{suffix}"


def input_files(specs: list[str]) -> list[Path]:
    """The files a run reads besides its images: the @lists."""
    return [Path(s[1:]) for s in specs if s.startswith("@") and s != "@-"]


def check_no_overwrite(jobs: list[Job], keys: list[str], extra: dict[str, Path | None],
                       specs: list[str], folder: str = "output_dir") -> None:
    """A usage error, before any work, if any output would replace an input (an image or an @list).

    ``extra``: other outputs by parameter (``{"jsonl": path}``).  Compared by resolved path and by device
    and inode (hard links, links to the input).  ``folder``: the parameter the message names for the
    output folder.
    """
    inputs: dict = {}
    for path in [j.source for j in jobs if j.error is None] + input_files(specs):
        if path.exists():
            inputs[file_identity(path)] = path
            inputs[(os.path.realpath(path),)] = path
    if not inputs:
        return
    outputs = [(_Label(None, job.path(k), f"output {job.path(k)}"), job.path(k)) for job in jobs for k in keys]
    outputs += [(_Label(param, path), Path(path)) for param, path in extra.items() if path is not None]
    for label, path in outputs:
        hit = inputs.get((os.path.realpath(path),)) or (inputs.get(file_identity(path)) if path.exists() else None)
        if hit is not None:
            raise label.error(f"would overwrite the input {hit}; choose another {{{folder}}} or name (campp "
                              f"never overwrites its inputs)", folder)


class _Label:
    """How a message names an output: ``{jsonl} PATH`` (a parameter's, see :class:`~campp_cli.errors.
    CamppError`) or as ``text`` says (``output PATH``, ``the input PATH``)."""

    def __init__(self, param: str | None, value: object, text: str | None = None):
        self.param, self.value = param, value
        self.text = f"{{{param}}} {value}" if text is None else text

    def __eq__(self, other) -> bool:
        return isinstance(other, _Label) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def error(self, rest: str, *also: str) -> UsageError:
        """``"<this label> <rest>"`` as a usage error, with ``also``: the other parameters ``rest`` names."""
        return UsageError(f"{self.text} {rest}", param=self.param, value=self.value,
                          also=tuple(a for a in also if a is not None and a != self.param))


def check_collisions(jobs: list[Job], keys: list[str], named: dict[str, Path | None], specs: list[str],
                     folders: dict[str, Path | None] | None = None, folds: bool = False) -> None:
    """A usage error, before any work, if two outputs would be one file, or an output would land in a folder
    another output owns, or an input lies in such a folder.

    ``named``: the single-file outputs by parameter (``{"jsonl": path, "report": path}``), compared with
    each other and with every figure and map of ``jobs`` (``keys``), by resolved path and by device and
    inode.  ``folders``: folders that belong to one output, by its parameter (``{"report": (FILE.html,
    FILE_files)}``): no other output, no figure and no input (of ``jobs`` or ``specs``' lists) may lie in
    them.  ``folds``: the disk ignores
    case and Unicode normalisation (:func:`folds_case`): names are compared as it sees them.  Streams
    (``/dev/null``, ``/dev/stdout``, a FIFO) are no files and may be shared.
    """
    places = _Places(folds)
    claims = _claim_named(named, places)
    owned = {_Label(param, owner): (folder, places.same(os.path.realpath(folder)))
             for param, (owner, folder) in (folders or {}).items() if folder is not None}
    for key, label in claims.items():
        if isinstance(key, str):
            _check_not_owned(owned, key, label)
    for job in jobs:
        if job.error is None:
            _check_job(job, keys, claims, owned, places)
    if owned:
        for path in [j.source for j in jobs if j.error is None] + input_files(specs):
            _check_not_owned(owned, places.same(os.path.realpath(path)), _Label(None, path, f"the input {path}"))


class _Places:
    """Where files land as the disk sees them: in their resolved folder (each resolved once), their names as
    ``same`` compares them (folded where the disk ignores case and normalisation)."""

    def __init__(self, folds: bool):
        self.same = fold_name if folds else (lambda name: name)
        self._real: dict[Path, str] = {}

    def of(self, folder: Path, name: str) -> str:
        if folder not in self._real:
            self._real[folder] = os.path.realpath(folder)
        return self.same(os.path.join(self._real[folder], name))


def _claim_named(named: dict[str, Path | None], places: _Places) -> dict:
    """Each single-file output's place and device and inode -> the label of the output that has it; a usage
    error if two have one (streams are no files and may be shared)."""
    claims: dict = {}
    for param, path in named.items():
        if path is None or is_stream(path):
            continue
        path = Path(path)
        label = _Label(param, path)
        mine = {places.of(path.parent, path.name)}
        try:
            st = path.stat()
            mine.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        for key in mine:
            other = claims.get(key)
            if other is not None and other != label:
                raise other.error(f"and {label.text} are the same file: give each output a name of its own",
                                  label.param)
        for key in mine:
            claims[key] = label
    return claims


def _check_not_owned(owned: dict[_Label, tuple[Path, str]], resolved: str, label: _Label) -> None:
    """A usage error if ``resolved`` lies in a folder of ``owned`` (its output -> (the folder as given,
    resolved))."""
    for owner, (shown, folder) in owned.items():
        if resolved == folder or resolved.startswith(folder.rstrip(os.sep) + os.sep):
            raise label.error(f"lies in {shown}, the folder of {owner.text}'s own files: give it another name or "
                              f"folder", owner.param)


def _check_job(job: Job, keys: list[str], claims: dict, owned: dict[_Label, tuple[Path, str]],
               places: _Places) -> None:
    """A usage error if one of ``job``'s files is a single-file output, or its folder lies in an owned one."""
    for k in keys:
        key = places.of(job.out_dir, name_of(job.stem, job.suffix, k))
        if key in claims:
            raise claims[key].error(f"is also the output {job.path(k)} (of {job.source}): give it another name")
    if owned:
        label = (_Label("output_dir", job.out_dir) if job.root is None or job.out_dir == job.root
                 else _Label(None, job.out_dir, f"the output folder {job.out_dir} (of {job.source})"))
        _check_not_owned(owned, places.of(job.out_dir, ""), label)


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder if needed; refuse files and read-only folders."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError("exists and is not a folder", param="output_dir", value=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create it ({exc.strerror or exc})", param="output_dir", value=out) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError("not writable", param="output_dir", value=out)
    return out


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` is no file to replace but a stream to write into: a character or block device, a
    FIFO, a socket (``/dev/null``, ``/dev/full``, a named pipe), or a link in ``/dev`` or ``/proc`` such as
    ``/dev/stdout`` or ``/dev/fd/1`` (whatever it leads to).  A missing path is a new file; a folder is
    no stream."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        return True
    absolute = os.path.abspath(path)
    return absolute.startswith(("/dev/", "/proc/")) and os.path.islink(absolute)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or the same device and inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def check_convert_target(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``campp convert``: a usage error, before anything is read, for a TARGET that is its SOURCE."""
    if str(target) == "-":
        raise UsageError("TARGET -: give a file name (/dev/stdout writes to standard output)")
    if os.path.exists(source) and same_file(source, target):
        raise UsageError(f"TARGET {target} is the SOURCE {source}: give another file name (campp never "
                         f"overwrites its inputs)")


def fold_name(name: str) -> str:
    """A name as a disk that ignores case and Unicode normalisation sees it (macOS, Windows, SMB shares)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def _existing(folder: Path) -> Path:
    """``folder``, or its nearest parent that exists."""
    current = Path(os.path.abspath(folder))
    while not current.is_dir() and current != current.parent:
        current = current.parent
    return current


def folds_case(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` (or, while it does not exist yet, its nearest existing parent) finds a file under
    a name that differs only in case or in Unicode normalisation (NFC against NFD): a probe file is made,
    looked up under such names, and removed (once per folder and process).  False where no probe can be
    made."""
    return _folds(str(_existing(Path(folder))))


@functools.lru_cache(maxsize=64)
def _folds(where: str) -> bool:
    name = f".campp-{os.getpid()}-{secrets.token_hex(4)}-probe-aB\u00e9"
    probe = os.path.join(where, name)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError:
        return False
    try:
        os.close(fd)
        mine = os.lstat(probe)
        for other in (name.swapcase(), unicodedata.normalize("NFD", name)):
            try:
                if os.path.samestat(os.lstat(os.path.join(where, other)), mine):
                    return True
            except OSError:
                pass
        return False
    except OSError:
        return False
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
