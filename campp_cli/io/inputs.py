"""What to explain and where each result goes: files, folders, globs and @lists into jobs.

Output names come from the inputs and never collide: a folder given with -f is
mirrored under the output folder, and two inputs that would share a name
(``a.png`` beside ``a.jpg``, the same name from two globs) are told apart by
their extension, then by a counter (the names themselves: :mod:`campp_cli.io.names`).
Nothing here imports torch.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, clip
from ..settings import FORMATS
from . import names

#: Largest ``@list`` read (a million paths of 100 bytes), and longest line in it (PATH_MAX).
MAX_LIST_BYTES = 100 * 1024 * 1024


MAX_LINE_BYTES = 4096


#: Files taken from folders (case-insensitive); a file named directly is tried whatever its name.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jfif", ".dib"}


@dataclass(frozen=True)
class Job:
    """One image to explain: where it comes from and the names of its outputs."""

    source: Path
    out_dir: Path  # the output folder, or a mirrored subfolder of it
    stem: str  # file stem of the comparison figure
    suffix: str  # ".jpeg" or ".jpg"
    error: str | None = None  # an input that is known bad before decoding (an empty glob...)
    root: Path | None = None  # the output folder out_dir lies in (never written through a link)

    def path(self, key: str) -> Path:
        """The output file for an output key (:func:`campp_cli.outputs.kinds.keys`): "" for the comparison,
        "_gradcam_heatmap"..., "_gradcam.npy" for a map."""
        return self.out_dir / names.name_of(self.stem, self.suffix, key)

    def output_paths(self, keys: list[str]) -> list[Path]:
        """The files of ``keys``, in their order."""
        return [self.path(k) for k in keys]


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def read_capped(source: str | os.PathLike | None, cap: int, param: str, value: object, *, unreadable: str,
                too_large: str, not_text: str, encoding: str = "utf-8-sig") -> str:
    """The text of the file ``source`` (None: standard input), read up to one byte past ``cap`` (never
    stat-ed: a FIFO or /dev/zero has no size).  A usage error naming ``param`` and its ``value`` if it cannot
    be read, holds more than ``cap`` bytes or is not ``encoding`` text; the messages are templates:
    ``unreadable`` with ``{reason}``, ``too_large`` with ``{mb}`` (``cap`` in MB), ``not_text`` with the
    decoder's ``{reason}`` and ``{start}``."""
    try:
        data = _read_stdin(cap + 1) if source is None else _read_file(source, cap + 1)
    except OSError as exc:
        raise UsageError(unreadable.format(reason=exc.strerror or exc), param=param, value=value) from None
    if len(data) > cap:
        raise UsageError(too_large.format(mb=cap // 2**20), param=param, value=value)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UsageError(not_text.format(reason=exc.reason, start=exc.start), param=param, value=value) from None


def _read_file(path: str | os.PathLike, size: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _read_stdin(size: int) -> bytes:
    stream = sys.stdin.buffer if sys.stdin is not None and hasattr(sys.stdin, "buffer") else None
    if stream is None:
        return (sys.stdin.read(size) if sys.stdin is not None else "").encode("utf-8")
    return stream.read(size)


def _read_list(spec: str) -> list[str]:
    """``@list.txt`` (or ``@-`` for stdin): one path a line; blank lines and # comments skipped.  At most
    :data:`MAX_LIST_BYTES` read, lines of at most :data:`MAX_LINE_BYTES`."""
    source = spec[1:]
    text = read_capped(None if source == "-" else source, MAX_LIST_BYTES, "files", spec,
                       unreadable="cannot read the list ({reason})",
                       too_large="the list is larger than {mb} MB; split it", not_text="the list is not UTF-8 text",
                       encoding="utf-8-sig" if source != "-" else "utf-8")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if len(line.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
            raise UsageError(f"line {number} is longer than {MAX_LINE_BYTES} bytes, more than a path can be "
                             f"({clip(line, 60)!r})", param="files", value=spec)
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def _within(path: Path, folders) -> bool:
    """Whether ``path`` resolves inside one of ``folders`` (given resolved, see :func:`expand`)."""
    if not folders:
        return False
    real = Path(os.path.realpath(path))
    for folder in (folders,) if isinstance(folders, Path) else folders:
        try:
            real.relative_to(folder)
            return True
        except ValueError:
            pass
    return False


def _resolved(skip) -> tuple[Path, ...]:
    """``skip`` (None, a folder or several) as a tuple of resolved folders."""
    if skip is None:
        return ()
    if isinstance(skip, (str, os.PathLike)):
        skip = (skip,)
    return tuple(Path(os.path.realpath(s)) for s in skip)


def walk_files(folder: Path, recursive: bool, skip=()):
    """Files under ``folder`` (sorted per folder), following links but never into a folder already
    visited, and never into ``skip`` (resolved folders: the output folder and the report's image folder; a
    re-run must not explain its outputs)."""
    seen = {names.file_identity(folder)}
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                if recursive and not _within(path, skip):
                    key = names.file_identity(path)
                    if key not in seen:
                        seen.add(key)
                        subfolders.append(path)
            elif current is folder or recursive:
                yield path
        stack.extend(reversed(subfolders))


def _folder_images(folder: Path, recursive: bool, skip=()) -> list[Path]:
    return [p for p in walk_files(folder, recursive, skip)
            if p.suffix.lower() in IMAGE_EXTENSIONS and not _within(p, skip) and p.is_file()]


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob pattern as a regular expression over '/'-separated paths: ``**`` spans folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            body = body.replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body[:1] in "!^" else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _glob(spec: str, skip) -> list[Path]:
    """``spec``'s matches; with ``**`` a walk that survives link loops and skips the output folder."""
    if "**" not in spec:
        return sorted(Path(m) for m in glob.glob(spec))
    parts = Path(spec).parts
    fixed = 0
    while fixed < len(parts) and not _is_glob(parts[fixed]):
        fixed += 1
    base = Path(*parts[:fixed]) if fixed else Path(".")
    rest = "/".join(parts[fixed:])
    regex = _glob_regex(rest)
    found = []
    for path in walk_files(base, recursive=True, skip=skip):
        rel = path.relative_to(base).as_posix()
        if regex.match(rel) and not _within(path, skip):
            found.append(path if fixed else Path(rel))
    return sorted(found)


@dataclass(frozen=True)
class _Source:
    path: Path
    rel_dir: Path  # where under the output folder its outputs go
    error: str | None = None


def expand(specs: list[str], recursive: bool = False, skip=None, _lists: tuple = ()) -> list[_Source]:
    """Every image the -f values name, in order, each file once (by what it resolves to).

    ``skip``: the folders outputs go to (a folder or several), never searched (not skipped when a file in
    one is named directly).
    """
    skip = _resolved(skip)  # resolved once, compared per file
    found: list[_Source] = []
    for spec in specs:
        if spec.startswith("@") and len(spec) > 1:
            key = "-" if spec == "@-" else os.path.realpath(spec[1:])
            if key in _lists:
                raise UsageError("the list names itself (directly or through another list)", param="files",
                                 value=spec)
            found += expand(_read_list(spec), recursive, skip, _lists + (key,))
            continue
        names.check_name_length("files", spec)
        path = Path(spec)
        if path.is_dir():
            files = _folder_images(path, recursive, skip)
            if not files:
                found.append(_Source(path, Path(), f"{path}: no image files in this folder"
                                     + ("" if recursive else " (--recursive descends into subfolders)")))
            found += [_Source(f, f.parent.relative_to(path)) for f in files]
        elif not path.exists() and _is_glob(spec):
            matches = _glob(spec, skip)
            if not matches:
                found.append(_Source(path, Path(), f"{spec}: no files match this pattern"))
            found += [_Source(m, Path()) for m in matches if not m.is_dir()]
        else:
            found.append(_Source(path, Path()))  # missing or odd paths fail later with their reason
    unique, seen = [], set()
    for src in found:
        key = (names.file_identity(src.path) if src.error is None and src.path.exists() else os.path.abspath(src.path),
               src.error)
        if key not in seen:
            seen.add(key)
            unique.append(src)
    return unique


def is_single(specs: list[str]) -> bool:
    """One -f naming one file (not a folder, pattern or list): the paper's one-photo mode."""
    for spec in specs:
        if not (spec.startswith("@") and len(spec) > 1):
            names.check_name_length("files", spec)
    if len(specs) != 1 or specs[0].startswith("@"):
        return False
    path = Path(specs[0])
    return not path.is_dir() and (path.exists() or not _is_glob(specs[0]))


def plan(specs: list[str], out_root: Path, output: str | None, recursive: bool = False,
         keys: list[str] | None = None, writes: bool = True, fmt: str | None = None,
         exclude=()) -> list[Job]:
    """Jobs for the -f values: one named file keeps ``-o`` as given; several use a template.

    ``keys``: the name suffixes every job writes (figures and maps, see
    :func:`campp_cli.outputs.kinds.keys`); no two jobs get a file name in common.  ``writes``:
    whether ``out_root`` receives outputs (then it is never searched for inputs).  ``fmt``: --format, the
    figures' format when ``output`` does not name one (default: JPEG).  ``exclude``: other folders that
    receive outputs (the report's images), never searched either.  Where ``out_root`` lies on a disk
    that ignores case or Unicode normalisation (:func:`~campp_cli.io.names.folds_case`), names equal under
    both are told apart as other collisions are.
    """
    ext = FORMATS[fmt or "jpeg"][0]
    keys = keys if keys is not None else [""]
    names.check_name_length("output_dir", out_root)
    if is_single(specs):
        # Named after the photo unless -o says otherwise: a shell loop over photos overwrites nothing.
        stem, suffix = names.output_stem(output or names.safe_stem(Path(specs[0])) + ext, fmt)
        names.check_output_name(output, stem, suffix, keys)
        return [Job(Path(specs[0]), out_root, stem, suffix, root=out_root)]
    template = output or "{stem}" + ext
    names.check_template(template, fmt)
    if writes:
        _check_not_an_input_folder(specs, out_root)
    longest = names.output_stem(names.fill(template, "x" * 150), fmt)  # the longest stem a template makes
    names.check_output_name(template, *longest, keys)
    sources = expand(specs, recursive, skip=((out_root,) if writes else ()) + tuple(exclude))
    if not sources:
        raise UsageError("no input files given (an empty list?)", param="files")
    same = names.fold_name if writes and names.folds_case(out_root) else (lambda name: name)
    return _named_jobs(sources, out_root, template, fmt, keys, same)


def _check_not_an_input_folder(specs: list[str], out_root: Path) -> None:
    """A usage error if the output folder is a folder given with -f."""
    out = names.file_identity(out_root)
    for spec in specs:
        if not spec.startswith("@") and Path(spec).is_dir() and names.file_identity(Path(spec)) == out:
            raise UsageError(f"{{output_dir}} {out_root} is the folder given with {{files}} {spec}: its outputs "
                             f"would be taken for inputs by the next run; use a subfolder (never read as input)",
                             param="output_dir", value=out_root, also=("files",))


def _named_jobs(sources: list[_Source], out_root: Path, template: str, fmt: str | None, keys: list[str],
                same) -> list[Job]:
    """A job for each source, named by ``template`` from its stem; a stem its folder already has (as ``same``
    compares names) takes its extension where that tells the group apart, then the first counter free for
    every file of the job."""
    by_ext = _told_apart_by_extension(sources, same)
    jobs: list[Job] = []
    claimed: set[tuple[str, str]] = set()  # (folder, file name) of every file of every job so far
    counters: dict[tuple[str, str], int] = {}  # the last counter tried for a (folder, stem): no retries from 1
    for src in sources:
        rel, stem = _base(src, _group(src, same) in by_ext)
        key_of = (same(rel.as_posix()), same(stem))
        n = counters[key_of] + 1 if key_of in counters else 1  # below it, every name is taken
        name = stem if n == 1 else f"{stem}_{n}"
        while True:
            out_stem, suffix = names.output_stem(names.fill(template, name), fmt)
            files = {(same(rel.as_posix()), same(names.name_of(out_stem, suffix, key))) for key in keys}
            if not files & claimed:
                break
            n += 1
            name = f"{stem}_{n}"
        counters[key_of] = n
        claimed |= files
        jobs.append(Job(src.path, out_root / rel, out_stem, suffix, src.error, root=out_root))
    return jobs


def _base(src: _Source, with_ext: bool) -> tuple[Path, str]:
    """(the folder under the output folder, the stem) a source's outputs are named from; ``with_ext``: the
    stem carries the source's extension (``a_png``)."""
    stem = names.safe_stem(src.path)
    if with_ext and src.path.suffix:
        stem = f"{stem}_{names.safe_stem(Path(src.path.suffix.lstrip('.').lower()))}"
    return src.rel_dir, stem


def _group(src: _Source, same) -> tuple[str, str]:
    rel, stem = _base(src, False)
    return same(rel.as_posix()), same(stem)


def _told_apart_by_extension(sources: list[_Source], same) -> set[tuple[str, str]]:
    """The groups of sources sharing a stem in a folder that their extensions tell apart: every member's
    differs (a.png, a.jpg)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for src in sources:
        groups.setdefault(_group(src, same), []).append(src.path.suffix.lower())
    return {key for key, exts in groups.items() if len(exts) > 1 and len(set(exts)) == len(exts)}
