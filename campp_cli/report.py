"""``--report FILE.html``: one static page of a run that opens from disk in any browser.

The page (``FILE.html``) holds the run's data as one JSON blob and the code
that draws it (``data/report.html``: no network, no CDN); its images go in a
sibling folder, ``FILE_files/``: per image a small thumbnail of the comparison
figure, the photo at panel size and each method's heatmap, which the page
stacks under an opacity slider.  The page is written atomically, refreshed
during a run (see :class:`Report`), so a killed run still leaves a report of
what was done.

What a command's ``finish`` stage adds for the report is :func:`card_assets`
(run where the figures are drawn, on any engine's workers); everything else
happens here, on the machine that runs campp.  Nothing here imports torch.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from importlib import resources
from pathlib import Path

import numpy as np

from .draw import encode, geometry, panels
from .errors import OutputError, UsageError
from .io import durable, names, tempfiles
from .settings import DEFAULT_REPORT_EVERY

#: Height in pixels of the card thumbnails (the comparison figure shrunk).
THUMB_HEIGHT = 120
THUMB_QUALITY = 70
ASSET_QUALITY = 85
PER_FOLDER = 1000  # images per subfolder of FILE_files/
_WNID_PREFIX = re.compile(r"^(n\d{8})(?:[_\-.]|$)")
_TEMPLATE = "report.html"
_DATA_MARK = "/*CAMPP_DATA*/null"
_TITLE_MARK = "<!--CAMPP_TITLE-->"
_DATA_BLOB = re.compile(r'<script type="application/json" id="campp-data">(.*?)</script>', re.S)


# ----------------------------------------------------------------------------- on the workers


def disagreement(maps: dict[str, np.ndarray]) -> float | None:
    """How much the methods' maps disagree: 1 - Pearson correlation, averaged over every pair of methods.

    0 when the maps are the same up to scale and offset, 1 when unrelated, up to 2 when opposite; with the
    default methods it is 1 - corr(Grad-CAM, Grad-CAM++).  A constant map has no correlation: against a
    constant map it counts 0, against any other 1.  None with fewer than two methods.  Maps of different
    sizes are compared at the largest.
    """
    arrays = [np.asarray(m, dtype=np.float64) for m in maps.values()]
    if len(arrays) < 2:
        return None
    side = max(max(a.shape) for a in arrays)
    flat = [(geometry.upsample(a.astype(np.float32), side) if a.shape != (side, side) else a).ravel()
            .astype(np.float64) for a in arrays]
    values = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            a, b = flat[i] - flat[i].mean(), flat[j] - flat[j].mean()
            na, nb = np.sqrt(a @ a), np.sqrt(b @ b)
            if na == 0 or nb == 0:
                values.append(0.0 if na == nb else 1.0)
            else:
                values.append(float(1.0 - np.clip(a @ b / (na * nb), -1.0, 1.0)))
    return float(np.mean(values))


def card_assets(photo: np.ndarray, figures: dict[str, np.ndarray], maps: dict[str, np.ndarray]) -> dict:
    """The report's images of one image, encoded: the thumbnail of the comparison figure, the photo (the
    square the model saw, at panel size), each method's heatmap (from ``figures``, as
    :func:`campp_cli.stages.render` draws them); and how much the methods' ``maps`` disagree."""
    comparison = figures[""]
    h, w = comparison.shape[:2]
    tw = max(1, round(w * THUMB_HEIGHT / h))
    thumb = geometry.resize_to(comparison, tw, THUMB_HEIGHT)
    return {
        "thumb": encode.encode_jpeg(thumb, THUMB_QUALITY),
        "size": [tw, THUMB_HEIGHT],
        "photo": encode.encode_jpeg(photo, ASSET_QUALITY),
        "heatmaps": {m: encode.encode_jpeg(figures[f"_{m}_heatmap"], ASSET_QUALITY) for m in maps},
        "disagreement": disagreement(maps),
    }


# ----------------------------------------------------------------------------- true classes


def true_class(path: str | os.PathLike, categories: list[str]) -> tuple[int | None, str]:
    """(class index or None, the name it was read from) of an image, as ``--labels-from-folders`` reads it:
    the name of its folder (``val/n01440764/x.JPEG``, ``train/cat/1.png``), else a WordNet id that starts its
    file name (``n01440764_10026.JPEG``).  Names match as ``--boxes`` object names do (WordNet ids for
    1000-class models, then class names exactly, then ignoring case)."""
    from .boxes import class_of

    path = Path(path)
    folder = path.parent.name
    if folder:
        index = class_of(folder, categories)
        if index is not None:
            return index, folder
    match = _WNID_PREFIX.match(path.name)
    if match:
        index = class_of(match.group(1), categories)
        if index is not None:
            return index, match.group(1)
    return None, folder or path.name


# ----------------------------------------------------------------------------- the page


def check_path(path: str | os.PathLike | None) -> None:
    """Usage errors for a --report path, before any model loads."""
    if path is None:
        return
    from .io.jsonl import check_writable

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--report {path}: give an .html file name")
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:  # the page could not name its image folder in a URL
        raise UsageError(f"--report {path.name.encode('utf-8', 'backslashreplace').decode()}: give a file name "
                         f"that is valid UTF-8") from None
    check_writable("--report", path)
    if names.is_stream(path):
        raise UsageError(f"--report {path}: not a regular file (the page is replaced as the run goes on)")
    folder = assets_folder(path)
    if folder.is_symlink():
        raise UsageError(f"--report {path}: {folder} (where its images go) is a symbolic link; campp never writes "
                         f"through links")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--report {path}: {folder} (where its images go) exists and is not a folder")


def assets_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "_files")


def asset_name(index: int, kind: str) -> str:
    """The path of an image's asset inside FILE_files/ (the page's script builds the same names)."""
    return f"{index // PER_FOLDER:03d}/{index:06d}_{kind}.jpeg"


class Report:
    """An HTML report being written: :meth:`add` each Result as it comes, :meth:`close` at the end.

    ``header``: what the page's header lists (model, layer, methods...).  The page is written again
    after ``every`` new images, or after a tenth of the images done so far if that is more (so a run of
    any length writes it O(log n) times more than once every ``every`` images), and by :meth:`close`.
    ``categories``: the model's class names, for ``labels_from_folders``.
    """

    def __init__(self, path: str | os.PathLike, command: str, header: dict, methods: list[str],
                 categories: list[str], total: int, labels_from_folders: bool = False,
                 every: int = DEFAULT_REPORT_EVERY, alpha: float = panels.DEFAULT_ALPHA):
        check_path(path)
        self.path = Path(path)
        self.assets = assets_folder(self.path)
        self.command = command
        self.header = dict(header)
        self.methods = list(methods)
        self.categories = categories
        self.total = total
        self.labels_from_folders = labels_from_folders
        self.every = max(1, every)
        self.alpha = alpha
        self.records: list[dict] = []
        self.unknown_truth: list[tuple[str, str]] = []  # (input, the name that matched no class)
        self.started = time.time()
        self._written_at = 0
        self._folders: set[str] = set()
        try:
            self.assets.mkdir(exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--report {self.path}: cannot create {self.assets} ({exc.strerror or exc})") from None
        # What a killed run left half-written: its temporary files (of processes no longer running).
        for folder in [self.path.parent, self.assets,
                       *(p for p in self.assets.iterdir() if p.is_dir() and not p.is_symlink())]:
            durable.recover(folder)
        # An earlier page at this path: what --skip-existing skips is shown as that run found it.
        self._earlier: dict[str, tuple[dict, int]] = {}  # input -> (its record, the slot of its images)
        self._earlier_methods: set[str] = set()
        self._read_earlier()
        self._reserved = {slot for record, slot in self._earlier.values() if "wh" in record}
        self._used: set[int] = set()
        self._next_slot = max([total - 1, *self._reserved], default=-1) + 1

    def _read_earlier(self) -> None:
        """The records of the page a run of the same command left at this path, if any (read from its
        data blob, the page's one source of truth; a page that cannot be read is no earlier run)."""
        try:
            if self.path.is_symlink() or not self.path.is_file():
                return
            match = _DATA_BLOB.search(self.path.read_text(encoding="utf-8", errors="replace"))
            data = json.loads(match.group(1)) if match else None
        except (OSError, ValueError):
            return
        if not isinstance(data, dict) or data.get("command") != self.command:
            return
        records, methods = data.get("records"), data.get("methods")
        if not isinstance(records, list) or not isinstance(methods, list):
            return
        self._earlier_methods = {m for m in methods if isinstance(m, str)}
        for index, record in enumerate(records):
            if isinstance(record, dict) and isinstance(record.get("n"), str) and "c" in record:
                slot = record.get("a", index)
                if isinstance(slot, int) and slot >= 0:
                    self._earlier[record["n"]] = (record, slot)

    def _slot(self, index: int, name: str) -> int:
        """Where the images of the ``index``-th record (of input ``name``) go: its earlier images' slot
        (replaced), else its index unless an earlier record still shown may need that one, else a free one."""
        earlier = self._earlier.get(name)
        if earlier is not None and "wh" in earlier[0]:
            slot = earlier[1]
        elif index not in self._reserved and index not in self._used:
            slot = index
        else:
            while self._next_slot in self._reserved or self._next_slot in self._used:
                self._next_slot += 1
            slot = self._next_slot
        self._used.add(slot)
        return slot

    def _as_found_earlier(self, result, index: int) -> dict | None:
        """A skipped result's record from the earlier page: only for the same methods (or more), and only if
        its comparison figure is still the file that run wrote (same size and modification time)."""
        earlier = self._earlier.get(result.input)
        if earlier is None or not result.outputs or not set(self.methods) <= self._earlier_methods:
            return None
        record, slot = earlier
        if record.get("f") is None or record.get("f") != _fingerprint(result.outputs[0]):
            return None
        kept = {k: record[k] for k in ("ci", "c", "p", "t5", "wh", "d", "f") if k in record}
        if "wh" in kept:
            self._used.add(slot)
            if slot != index:
                kept["a"] = slot
        return kept

    def add(self, result) -> None:
        """Record one image's Result (a failure, a skip or a done image) and write its images."""
        index = len(self.records)
        record: dict = {"n": result.input}
        if result.error is not None:
            record["err"] = result.error
        elif result.skipped:
            record["skip"] = 1
            earlier = self._as_found_earlier(result, index)
            if earlier is not None:
                record.update(earlier)
                if self.labels_from_folders:
                    truth, name = true_class(result.input, self.categories)
                    if truth is not None:
                        record["tc"] = self.categories[truth]
                        record["ok"] = int(bool(record["t5"]) and record["t5"][0][0] == self.categories[truth])
        else:
            record.update(ci=result.class_index, c=result.class_name, p=round(result.probability, 6),
                          t5=[[name, round(p, 6)] for _, name, p in result.top5])
            card = result.extra.pop("card", None)  # the bytes go to disk, not into memory for the run
            if card is not None:
                slot = self._slot(index, result.input)
                self._write_assets(slot, card)
                if slot != index:
                    record["a"] = slot
                record["wh"] = card["size"]
                if card["disagreement"] is not None:
                    record["d"] = round(card["disagreement"], 5)
            if result.outputs:
                fingerprint = _fingerprint(result.outputs[0])
                if fingerprint is not None:
                    record["f"] = fingerprint
            if self.labels_from_folders:
                truth, name = true_class(result.input, self.categories)
                if truth is None:
                    self.unknown_truth.append((result.input, name))
                else:
                    record["tc"] = self.categories[truth]
                    record["ok"] = int(result.top5[0][0] == truth) if result.top5 else 0
            if "scores" in result.extra:
                record["s"] = {m: _scores(s) for m, s in result.extra["scores"].items()}
            located = result.extra.get("boxes")
            if located is not None:
                record["b"] = located.get("status")
                for m, b in located.get("scores", {}).items():
                    record["s"][m].update(loc={k: round(v, 4) for k, v in b["loc"].items()},
                                          pg=int(b["pointing_hit"]), epg=round(float(b["energy"]), 4))
        self.records.append(record)
        done = len(self.records)
        if done - self._written_at >= max(self.every, self._written_at // 10):
            self.write()

    def _write_assets(self, index: int, card: dict) -> None:
        files = {"thumb": card["thumb"], "photo": card["photo"], **card["heatmaps"]}
        for kind, data in files.items():
            target = self.assets / asset_name(index, kind)
            try:
                if target.parent.name not in self._folders:
                    if target.parent.is_symlink():
                        raise OSError(40, "a symbolic link (campp never writes through links)")
                    target.parent.mkdir(exist_ok=True)
                    self._folders.add(target.parent.name)
                _replace(target, data)
            except OSError as exc:
                raise OutputError(f"--report {self.path}: cannot write {target} ({exc.strerror or exc}); "
                                  f"the run stops here") from None

    def document(self, final: bool, summary: dict | None = None) -> dict:
        counts = {"done": 0, "failed": 0, "skipped": 0}
        for r in self.records:
            counts["failed" if "err" in r else "skipped" if "skip" in r else "done"] += 1
        data = {
            "command": self.command,
            "header": {**self.header, "seconds": round(time.time() - self.started, 1)},
            "counts": {**counts, "total": self.total},
            "final": final,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
            "methods": self.methods,
            "titles": _titles(self.methods),
            "alpha": self.alpha,
            "assets": self.assets.name,
            "per_folder": PER_FOLDER,
            "truth": self.labels_from_folders,
            "records": self.records,
        }
        if summary is not None:
            data["summary"] = _finite(summary)
        if any("s" in r for r in self.records):
            data["curves"] = _finite(self.mean_curves())
        return data

    def mean_curves(self) -> dict:
        """Each method's mean deletion and insertion curves over the images scored."""
        out = {}
        for m in self.methods:
            scored = [r["s"][m] for r in self.records if "s" in r and m in r["s"]]
            if scored:
                out[m] = {k: np.round(np.mean([s[k] for s in scored], axis=0), 5).tolist()
                          for k in ("dc", "ic")}
        return out

    def write(self, final: bool = False, summary: dict | None = None) -> None:
        """Write the page now, atomically (readers see the old page or the new one, never a torn one)."""
        blob = json.dumps(self.document(final, summary), ensure_ascii=True, separators=(",", ":"),
                          allow_nan=False, default=_plain)
        blob = blob.replace("<", "\\u003c")  # "<" occurs only inside JSON strings: the script cannot end early
        title = f"campp {self.command}: {self.header.get('model', '')} ({len(self.records)} images)"
        title = title.encode("utf-8", "backslashreplace").decode("utf-8")  # a name that is not valid UTF-8
        page = _template().replace(_DATA_MARK, blob, 1).replace(_TITLE_MARK, html.escape(title), 1)
        try:
            durable.write_atomic(self.path, page.encode("utf-8"))
        except OSError as exc:
            raise OutputError(f"--report {self.path}: cannot write ({exc.strerror or exc})") from None
        self._written_at = len(self.records)

    def close(self, summary: dict | None = None) -> None:
        self.write(final=True, summary=summary)


def _replace(target: Path, data: bytes) -> None:
    """``target`` replaced by ``data`` in one rename (readers see the old image or the new one); not synced:
    a report's images can be made again, and a run writes thousands.  The temporary file is locked while it
    exists, so that another run's recovery leaves it alone (see :func:`campp_cli.io.durable.recover`)."""
    tmp = target.with_name(tempfiles.temp_name(f"{tempfiles.short_tag(target.name)}.part"))
    fd = tempfiles.create_locked(tmp)
    try:
        tempfiles.write_fd(fd, data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)


def _fingerprint(path) -> list[int] | None:
    """[size, modification time in ns] of an output file: whether a file is still the one a run wrote."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _scores(s) -> dict:
    """One method's evaluate scores of one image, as the page shows them."""
    return {"y": round(float(s.y), 5), "o": round(float(s.o), 5), "drop": round(float(s.drop), 3),
            "del": round(float(s.deletion_auc), 4), "ins": round(float(s.insertion_auc), 4),
            "dc": np.round(np.asarray(s.deletion, dtype=np.float64), 4).tolist(),
            "ic": np.round(np.asarray(s.insertion, dtype=np.float64), 4).tolist()}


def _titles(methods: list[str]) -> dict[str, str]:
    from .cam.methods import title

    return {m: title(m) for m in methods}


def _finite(value):
    """``value`` with every non-finite float (an interval over no images...) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _plain(value):
    """JSON for NumPy scalars and arrays; a non-finite number becomes null."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _template() -> str:
    return resources.files("campp_cli").joinpath("data", _TEMPLATE).read_text(encoding="utf-8")
