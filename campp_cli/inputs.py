"""What to explain and where each result goes: files, folders, globs and @lists into jobs.

Output names come from the inputs and never collide: a folder given with -f is
mirrored under the output folder, and two inputs that would share a name
(``a.png`` beside ``a.jpg``, the same name from two globs) are told apart by
their extension, then by a counter.  Nothing here imports torch.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .settings import DEFAULT_OUTPUT

#: Files taken from folders (case-insensitive); a file named directly is tried whatever its name.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jfif", ".dib"}
JPEG_SUFFIXES = (".jpeg", ".jpg")


@dataclass(frozen=True)
class Job:
    """One image to explain: where it comes from and the names of its outputs."""

    source: Path
    out_dir: Path  # the output folder, or a mirrored subfolder of it
    stem: str  # file stem of the comparison figure
    suffix: str  # ".jpeg" or ".jpg"
    error: str | None = None  # an input that is known bad before decoding (an empty glob...)

    def figure_path(self, key: str) -> Path:
        """``key`` is a figure's name suffix: "" for the comparison, "_gradcam_heatmap"..."""
        return self.out_dir / f"{self.stem}{key}{self.suffix}"

    def map_path(self, method: str) -> Path:
        return self.out_dir / f"{self.stem}_{method}.npy"

    def output_paths(self, methods, save_maps: bool = False, guided: bool = False) -> list[Path]:
        """Every file this job writes for ``methods``, the comparison figure first."""
        paths = [self.figure_path(k) for k in figure_keys(methods, guided)]
        if save_maps:
            paths += [self.map_path(m) for m in methods]
        return paths


def figure_keys(methods, guided: bool = False) -> list[str]:
    """Name suffixes of the figures for ``methods``, in the order they are written and reported."""
    keys = [""]
    for m in methods:
        keys += [f"_{m}_heatmap", f"_{m}_overlay"]
    if guided:
        keys += [f"_guided_{m}" for m in methods]
    return keys


def output_stem(name: str) -> tuple[str, str]:
    """Split and check ``-o``: a plain JPEG file name, never a path."""
    if not name or "/" in name or "\\" in name or os.sep in name or name in (".", ".."):
        raise UsageError(f"-o {name!r}: give a file name without folders (use --output-dir for the folder)")
    if ".." in name:
        raise UsageError(f"-o {name!r}: '..' is not allowed in output names")
    stem, suffix = os.path.splitext(name)
    if not suffix:
        suffix = ".jpeg"
    if suffix.lower() not in JPEG_SUFFIXES or not stem or stem.startswith("."):
        raise UsageError(f"-o {name!r}: the output must be a JPEG file name such as out.jpeg")
    return stem, suffix


def check_template(template: str) -> None:
    """``-o`` for several inputs: a file-name template with ``{stem}``."""
    if "{stem}" not in template:
        raise UsageError(f"-o {template!r}: with several inputs, -o must be a template containing {{stem}} "
                         f"(the input's name), such as {{stem}}.jpeg")
    try:
        sample = template.format(stem="x")
    except (KeyError, IndexError, ValueError):
        raise UsageError(f"-o {template!r}: the only field a template may use is {{stem}}") from None
    output_stem(sample)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _read_list(spec: str) -> list[str]:
    """``@list.txt`` (or ``@-`` for stdin): one path a line; blank lines and # comments skipped."""
    source = spec[1:]
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise UsageError(f"-f {spec}: cannot read the list ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"-f {spec}: the list is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    walker = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in walker if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@dataclass(frozen=True)
class _Source:
    path: Path
    rel_dir: Path  # where under the output folder its outputs go
    error: str | None = None


def expand(specs: list[str], recursive: bool = False) -> list[_Source]:
    """Every image the -f values name, in order, each path once."""
    found: list[_Source] = []
    for spec in specs:
        if spec.startswith("@") and len(spec) > 1:
            found += expand(_read_list(spec), recursive)
            continue
        path = Path(spec)
        if path.is_dir():
            files = _folder_images(path, recursive)
            if not files:
                found.append(_Source(path, Path(), f"{path}: no image files in this folder"
                                     + ("" if recursive else " (--recursive descends into subfolders)")))
            found += [_Source(f, f.parent.relative_to(path)) for f in files]
        elif not path.exists() and _is_glob(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            if not matches:
                found.append(_Source(path, Path(), f"{spec}: no files match this pattern"))
            found += [_Source(m, Path()) for m in matches if not m.is_dir()]
        else:
            found.append(_Source(path, Path()))  # missing or odd paths fail later with their reason
    unique, seen = [], set()
    for src in found:
        key = (os.path.abspath(src.path), src.error)
        if key not in seen:
            seen.add(key)
            unique.append(src)
    return unique


def is_single(specs: list[str]) -> bool:
    """One -f naming one file (not a folder, pattern or list): the paper's one-photo mode."""
    if len(specs) != 1 or specs[0].startswith("@"):
        return False
    path = Path(specs[0])
    return not path.is_dir() and (path.exists() or not _is_glob(specs[0]))


def plan(specs: list[str], out_root: Path, output: str | None, recursive: bool = False) -> list[Job]:
    """Jobs for the -f values: one named file keeps ``-o`` as given; several use a template."""
    if is_single(specs):
        stem, suffix = output_stem(output or DEFAULT_OUTPUT)
        return [Job(Path(specs[0]), out_root, stem, suffix)]
    sources = expand(specs, recursive)
    template = output or "{stem}.jpeg"
    check_template(template)
    # Name by stem; where sources in one folder share a stem, add their extension, or else a counter.
    def base(src: _Source, with_ext: bool) -> tuple[Path, str]:
        # Derived names must pass the same checks as a user's -o: no '..', no leading dot.
        stem = (src.path.stem or src.path.name).replace("..", "_").lstrip(".") or "image"
        if with_ext and src.path.suffix:
            stem = f"{stem}_{src.path.suffix.lstrip('.').lower()}"
        return src.rel_dir, stem

    groups: dict[tuple[Path, str], list[str]] = {}
    for src in sources:
        groups.setdefault(base(src, False), []).append(src.path.suffix.lower())
    # The extension tells a group apart only when every member's differs (a.png, a.jpg).
    by_ext = {key for key, exts in groups.items() if len(exts) > 1 and len(set(exts)) == len(exts)}
    jobs, taken = [], set()
    for src in sources:
        rel, stem = base(src, base(src, False) in by_ext)
        name, n = stem, 1
        while (rel, name) in taken:
            n += 1
            name = f"{stem}_{n}"
        taken.add((rel, name))
        out_stem, suffix = output_stem(template.format(stem=name))
        jobs.append(Job(src.path, out_root / rel, out_stem, suffix, src.error))
    return jobs


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
