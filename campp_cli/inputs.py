"""What to explain and where each result goes: files, folders, globs and @lists into jobs.

Output names come from the inputs and never collide: a folder given with -f is
mirrored under the output folder, and two inputs that would share a name
(``a.png`` beside ``a.jpg``, the same name from two globs) are told apart by
their extension, then by a counter.  Nothing here imports torch.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import secrets
import stat
import string
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError, clip
from .settings import FORMATS

#: Largest ``@list`` read (a million paths of 100 bytes), and longest line in it (PATH_MAX).
MAX_LIST_BYTES = 100 * 1024 * 1024
MAX_LINE_BYTES = 4096
#: Longest file or folder name most filesystems take (bytes).
NAME_MAX = 255

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
        """The output file for a key of :func:`output_keys`: "" for the comparison, "_gradcam_heatmap"...,
        ".npy:gradcam" for a map."""
        return self.out_dir / name_of(self.stem, self.suffix, key)

    def output_paths(self, methods, save_maps: bool = False, guided: bool = False) -> list[Path]:
        """Every file this job writes for ``methods``, the comparison figure first."""
        return [self.path(k) for k in output_keys(methods, save_maps, guided)]


def figure_keys(methods, guided: bool = False) -> list[str]:
    """Name suffixes of the figures for ``methods``, in the order they are written and reported."""
    keys = [""]
    for m in methods:
        keys += [f"_{m}_heatmap", f"_{m}_overlay"]
    if guided:
        keys += [f"_guided_{m}" for m in methods]
    return keys


def format_of(suffix: str) -> str | None:
    """The --format a file suffix names ("jpeg", "png"), or None."""
    return next((f for f, suffixes in FORMATS.items() if suffix.lower() in suffixes), None)


#: How :func:`output_stem`'s messages name the name, its folder and its format: the command line's flags.
CLI_NAMES = ("-o", "--output-dir", "--format")


def output_stem(name: str, fmt: str | None = None, names: tuple[str, str, str] = CLI_NAMES) -> tuple[str, str]:
    """Split and check ``-o``: a plain JPEG or PNG file name, never a path; ``fmt`` (--format) names the
    format when the name has no suffix, and must agree with one it has.  ``names``: how errors call the
    name, the folder and the format (:data:`CLI_NAMES`; the library's own arguments elsewhere)."""
    option, folder, fmt_option = names
    if not name or "/" in name or "\\" in name or os.sep in name or name in (".", ".."):
        raise UsageError(f"{option} {clip(name)!r}: give a file name without folders (use {folder} for the folder)")
    if ".." in name:
        raise UsageError(f"{option} {clip(name)!r}: '..' is not allowed in output names")
    stem, suffix = os.path.splitext(name)
    if not suffix:
        suffix = FORMATS[fmt or "jpeg"][0]
    if format_of(suffix) is None or not stem or stem.startswith("."):
        raise UsageError(f"{option} {clip(name)!r}: the output must be a JPEG or PNG file name such as out.jpeg "
                         f"or out.png")
    if fmt is not None and format_of(suffix) != fmt:
        raise UsageError(f"{option} {clip(name)!r} names a {format_of(suffix).upper()} file but {fmt_option} is "
                         f"{fmt}: give {stem}{FORMATS[fmt][0]}, or leave one of them out")
    return stem, suffix


def check_template(template: str, fmt: str | None = None) -> None:
    """``-o`` for several inputs: a file-name template whose only field is a plain ``{stem}`` (no format
    spec, no conversion: ``{stem:>9}`` or ``{stem!r}`` is refused)."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError:
        raise UsageError(f"-o {clip(template)!r}: not a valid template (unbalanced braces?)") from None
    if any(f != "stem" for f, _, _ in fields):
        raise UsageError(f"-o {clip(template)!r}: the only field a template may use is {{stem}}")
    if any(spec or conv for _, spec, conv in fields):
        raise UsageError(f"-o {clip(template)!r}: write {{stem}} as it is, without a format spec or conversion "
                         f"(':...' or '!...')")
    if not fields:
        raise UsageError(f"-o {clip(template)!r}: with several inputs, -o must be a template containing {{stem}} "
                         f"(the input's name), such as {{stem}}.jpeg")
    output_stem(fill(template, "x"), fmt)


def fill(template: str, stem: str) -> str:
    """A template checked by :func:`check_template`, with ``stem`` for every ``{stem}``."""
    return template.format(stem=stem)


def check_name_length(where: str, path: str | os.PathLike) -> None:
    """A usage error if a folder or file name in ``path`` is longer than filesystems allow (255 bytes):
    ``where`` is the option (``-f``, ``--jsonl``...)."""
    raw = os.fsencode(path)
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            shown = clip(os.fsdecode(part))
            raise UsageError(f"{where}: the name {shown!r} is {len(part)} bytes long; file and folder names "
                             f"are at most {NAME_MAX} bytes")


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _read_list(spec: str) -> list[str]:
    """``@list.txt`` (or ``@-`` for stdin): one path a line; blank lines and # comments skipped.  At most
    :data:`MAX_LIST_BYTES` read, lines of at most :data:`MAX_LINE_BYTES`."""
    source = spec[1:]
    try:
        if source == "-":
            stream = sys.stdin.buffer if sys.stdin is not None and hasattr(sys.stdin, "buffer") else None
            if stream is None:
                data = (sys.stdin.read(MAX_LIST_BYTES + 1) if sys.stdin is not None else "").encode("utf-8")
            else:
                data = stream.read(MAX_LIST_BYTES + 1)
        else:
            with open(source, "rb") as fh:
                data = fh.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"-f {clip(spec)}: cannot read the list ({exc.strerror or exc})") from None
    if len(data) > MAX_LIST_BYTES:
        raise UsageError(f"-f {clip(spec)}: the list is larger than {MAX_LIST_BYTES // 2**20} MB; split it")
    try:
        text = data.decode("utf-8-sig" if source != "-" else "utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"-f {clip(spec)}: the list is not UTF-8 text") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if len(line.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
            raise UsageError(f"-f {clip(spec)}: line {number} is longer than {MAX_LINE_BYTES} bytes, more than "
                             f"a path can be ({clip(line, 60)!r})")
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: device and inode, or the resolved path if it cannot be read."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return (os.path.realpath(path),)


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
    seen = {_identity(folder)}
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
                    key = _identity(path)
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
                raise UsageError(f"-f {spec}: the list names itself (directly or through another list)")
            found += expand(_read_list(spec), recursive, skip, _lists + (key,))
            continue
        check_name_length("-f", spec)
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
        key = (_identity(src.path) if src.error is None and src.path.exists() else os.path.abspath(src.path),
               src.error)
        if key not in seen:
            seen.add(key)
            unique.append(src)
    return unique


def is_single(specs: list[str]) -> bool:
    """One -f naming one file (not a folder, pattern or list): the paper's one-photo mode."""
    for spec in specs:
        if not (spec.startswith("@") and len(spec) > 1):
            check_name_length("-f", spec)
    if len(specs) != 1 or specs[0].startswith("@"):
        return False
    path = Path(specs[0])
    return not path.is_dir() and (path.exists() or not _is_glob(specs[0]))


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


def plan(specs: list[str], out_root: Path, output: str | None, recursive: bool = False,
         keys: list[str] | None = None, writes: bool = True, fmt: str | None = None,
         exclude=()) -> list[Job]:
    """Jobs for the -f values: one named file keeps ``-o`` as given; several use a template.

    ``keys``: the name suffixes every job writes (figures and maps, see
    :func:`output_keys`); no two jobs get a file name in common.  ``writes``:
    whether ``out_root`` receives outputs (then it is never searched for inputs).  ``fmt``: --format, the
    figures' format when ``output`` does not name one (default: JPEG).  ``exclude``: other folders that
    receive outputs (the report's images), never searched either.  Where ``out_root`` lies on a disk
    that ignores case or Unicode normalisation (:func:`folds_case`), names equal under both are told
    apart as other collisions are.
    """
    ext = FORMATS[fmt or "jpeg"][0]
    keys = keys if keys is not None else [""]
    check_name_length("--output-dir", out_root)
    if is_single(specs):
        # Named after the photo unless -o says otherwise: a shell loop over photos overwrites nothing.
        stem, suffix = output_stem(output or safe_stem(Path(specs[0])) + ext, fmt)
        _check_output_name(output, stem, suffix, keys)
        return [Job(Path(specs[0]), out_root, stem, suffix, root=out_root)]
    template = output or "{stem}" + ext
    check_template(template, fmt)
    if writes:
        for spec in specs:
            if not spec.startswith("@") and Path(spec).is_dir() and _identity(Path(spec)) == _identity(out_root):
                raise UsageError(f"--output-dir {out_root} is the folder given with -f {spec}: its outputs would "
                                 f"be taken for inputs by the next run; use a subfolder (never read as input)")
    _check_output_name(template, *output_stem(fill(template, "x" * 150), fmt), keys)  # the longest stem
    sources = expand(specs, recursive, skip=((out_root,) if writes else ()) + tuple(exclude))
    if not sources:
        raise UsageError("-f: no input files given (an empty list?)")
    same = fold_name if writes and folds_case(out_root) else (lambda name: name)

    def base(src: _Source, with_ext: bool) -> tuple[Path, str]:
        stem = safe_stem(src.path)
        if with_ext and src.path.suffix:
            stem = f"{stem}_{safe_stem(Path(src.path.suffix.lstrip('.').lower()))}"
        return src.rel_dir, stem

    def group(src: _Source) -> tuple[str, str]:
        rel, stem = base(src, False)
        return same(rel.as_posix()), same(stem)

    groups: dict[tuple[str, str], list[str]] = {}
    for src in sources:
        groups.setdefault(group(src), []).append(src.path.suffix.lower())
    # The extension tells a group apart only when every member's differs (a.png, a.jpg).
    by_ext = {key for key, exts in groups.items() if len(exts) > 1 and len(set(exts)) == len(exts)}
    jobs: list[Job] = []
    claimed: set[tuple[str, str]] = set()  # (folder, file name) of every file of every job so far
    counters: dict[tuple[str, str], int] = {}  # the last counter tried for a (folder, stem): no retries from 1
    for src in sources:
        rel, stem = base(src, group(src) in by_ext)
        key_of = (same(rel.as_posix()), same(stem))
        n = counters[key_of] + 1 if key_of in counters else 1  # below it, every name is taken
        name = stem if n == 1 else f"{stem}_{n}"
        while True:
            out_stem, suffix = output_stem(fill(template, name), fmt)
            files = {(same(rel.as_posix()), same(name_of(out_stem, suffix, key))) for key in keys}
            if not files & claimed:
                break
            n += 1
            name = f"{stem}_{n}"
        counters[key_of] = n
        claimed |= files
        jobs.append(Job(src.path, out_root / rel, out_stem, suffix, src.error, root=out_root))
    return jobs


def _check_output_name(output: str | None, stem: str, suffix: str, keys: list[str]) -> None:
    """A usage error when ``-o`` makes a file name longer than filesystems allow (with the longest key, and
    for a template the longest stem, 150 bytes, and a counter)."""
    longest = max((name_of(stem, suffix, key) for key in keys), key=lambda n: len(n.encode("utf-8", "surrogateescape")))
    size = len(longest.encode("utf-8", "surrogateescape")) + (0 if output is None or "{" not in output else 8)
    if size > NAME_MAX:
        raise UsageError(f"-o {clip(output)!r}: makes file names of up to {size} bytes (such as "
                         f"{clip(longest, 80)!r}); file names are at most {NAME_MAX} bytes")


def name_of(stem: str, suffix: str, key: str) -> str:
    """The file name for a key: a figure's suffix ("", "_gradcam_heatmap") or ".npy:METHOD" for a map."""
    if key.startswith(".npy:"):
        return f"{stem}_{key[5:]}.npy"
    return f"{stem}{key}{suffix}"


def output_keys(methods, save_maps: bool = False, guided: bool = False) -> list[str]:
    """Every file a job writes, as keys for :func:`name_of`."""
    return figure_keys(methods, guided) + ([f".npy:{m}" for m in methods] if save_maps else [])


def input_files(specs: list[str]) -> list[Path]:
    """The files a run reads besides its images: the @lists."""
    return [Path(s[1:]) for s in specs if s.startswith("@") and s != "@-"]


def check_no_overwrite(jobs: list[Job], keys: list[str], extra: dict[str, Path | None],
                       specs: list[str]) -> None:
    """A usage error, before any work, if any output would replace an input (an image or an @list).

    ``extra``: other outputs by option name (``{"--jsonl": path}``).  Compared by
    resolved path and by device and inode (hard links, links to the input).
    """
    inputs: dict = {}
    for path in [j.source for j in jobs if j.error is None] + input_files(specs):
        if path.exists():
            inputs[_identity(path)] = path
            inputs[(os.path.realpath(path),)] = path
    if not inputs:
        return
    outputs = [(f"output {job.path(k)}", job.path(k)) for job in jobs for k in keys]
    outputs += [(f"{option} {path}", Path(path)) for option, path in extra.items() if path is not None]
    for label, path in outputs:
        hit = inputs.get((os.path.realpath(path),)) or (inputs.get(_identity(path)) if path.exists() else None)
        if hit is not None:
            raise UsageError(f"{label} would overwrite the input {hit}; choose another --output-dir or name "
                             f"(campp never overwrites its inputs)")


def check_collisions(jobs: list[Job], keys: list[str], named: dict[str, Path | None], specs: list[str],
                     folders: dict[str, Path | None] | None = None, folds: bool = False) -> None:
    """A usage error, before any work, if two outputs would be one file, or an output would land in a folder
    another output owns, or an input lies in such a folder.

    ``named``: the single-file outputs by option (``{"--jsonl": path, "--report": path}``), compared with
    each other and with every figure and map of ``jobs`` (``keys``), by resolved path and by device and
    inode.  ``folders``: folders that belong to one output (``{"--report FILE.html": FILE_files}``): no other
    output,
    no figure and no input (of ``jobs`` or ``specs``' lists) may lie in them.  ``folds``: the disk ignores
    case and Unicode normalisation (:func:`folds_case`): names are compared as it sees them.  Streams
    (``/dev/null``, ``/dev/stdout``, a FIFO) are no files and may be shared.
    """
    same = fold_name if folds else (lambda name: name)
    real_dirs: dict[Path, str] = {}

    def where(folder: Path, name: str) -> str:
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        return same(os.path.join(real_dirs[folder], name))

    claims: dict = {}  # key -> the label of the output that has it
    for option, path in named.items():
        if path is None or is_stream(path):
            continue
        path = Path(path)
        label = f"{option} {path}"
        mine = {where(path.parent, path.name)}
        try:
            st = path.stat()
            mine.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        for key in mine:
            other = claims.get(key)
            if other is not None and other != label:
                raise UsageError(f"{other} and {label} are the same file: give each output a name of its own")
        for key in mine:
            claims[key] = label
    owned = {option: (folder, same(os.path.realpath(folder))) for option, folder in (folders or {}).items()
             if folder is not None}

    def owner(resolved: str, label: str) -> None:
        for option, (shown, folder) in owned.items():
            if resolved == folder or resolved.startswith(folder.rstrip(os.sep) + os.sep):
                raise UsageError(f"{label} lies in {shown}, the folder of {option}'s own files: give it "
                                 f"another name or folder")

    for key, label in claims.items():
        if isinstance(key, str):
            owner(key, label)
    for job in jobs:
        if job.error is not None:
            continue
        for k in keys:
            key = where(job.out_dir, name_of(job.stem, job.suffix, k))
            if key in claims:
                raise UsageError(f"{claims[key]} is also the output {job.path(k)} (of {job.source}): give it "
                                 f"another name")
        if owned:
            label = (f"--output-dir {job.out_dir}" if job.root is None or job.out_dir == job.root
                     else f"the output folder {job.out_dir} (of {job.source})")
            owner(where(job.out_dir, ""), label)
    if owned:
        for path in [j.source for j in jobs if j.error is None] + input_files(specs):
            owner(same(os.path.realpath(path)), f"the input {path}")


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder if needed; refuse files and read-only folders."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--output-dir {out}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {out}: not writable")
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
