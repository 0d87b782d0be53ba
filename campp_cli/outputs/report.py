"""``--report FILE.html``: one static page of a run that opens from disk in any browser.

The page (``FILE.html``) holds the run's data as one JSON blob and the code
that draws it (``data/report.html``: no network, no CDN); its images go in a
sibling folder, ``FILE_files/``: per image a small thumbnail of the comparison
figure, the photo at panel size and each method's heatmap, which the page
stacks under an opacity slider.  The page is written atomically, refreshed
during a run (see :class:`Report`), so a killed run still leaves a report of
what was done.

What a command's ``finish`` stage adds for the report is
:func:`campp_cli.outputs.report_cards.card_assets` (run where the figures are
drawn, on any engine's workers), and each image's record and their format in
the blob are in that module too; everything else happens here, on the machine
that runs campp.  Nothing here imports torch.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from importlib import resources
from pathlib import Path

from ..errors import OutputError, UsageError
from ..io.durable import recover, replace_unsynced, write_atomic
from ..io.names import is_stream
from ..settings import DEFAULT_ALPHA, DEFAULT_REPORT_EVERY
from .kinds import report_asset, report_patterns


def _cards():
    """The cards' module (NumPy, OpenCV), imported when a report is written, not when its path is checked."""
    from . import report_cards

    return report_cards

PER_FOLDER = 1000  # images per subfolder of FILE_files/
_TEMPLATE = "report.html"
_DATA_MARK = "/*CAMPP_DATA*/null"
_TITLE_MARK = "<!--CAMPP_TITLE-->"
_DATA_BLOB = re.compile(r'<script type="application/json" id="campp-data">(.*?)</script>', re.S)


# ----------------------------------------------------------------------------- the page


def check_path(path: str | os.PathLike | None) -> None:
    """Usage errors for a --report path, before any model loads."""
    if path is None:
        return
    from ..io.jsonl import check_writable

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError("give an .html file name", param="report", value=path)
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:  # the page could not name its image folder in a URL
        raise UsageError("give a file name that is valid UTF-8", param="report",
                         value=path.name.encode("utf-8", "backslashreplace").decode()) from None
    check_writable("report", path)
    if is_stream(path):
        raise UsageError("not a regular file (the page is replaced as the run goes on)", param="report", value=path)
    folder = assets_folder(path)
    if folder.is_symlink():
        raise UsageError(f"{folder} (where its images go) is a symbolic link; campp never writes through links",
                         param="report", value=path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} (where its images go) exists and is not a folder", param="report", value=path)


def assets_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "_files")


def asset_name(index: int, kind: str, method: str | None = None) -> str:
    """The path inside FILE_files/ of the card ``index``'s image of ``kind`` ("thumb", "photo", "heatmap" with
    its ``method``; :mod:`campp_cli.outputs.kinds` names them, and the page's script builds the same names)."""
    return f"{index // PER_FOLDER:03d}/{report_asset('report_' + kind, index, method)}"


class Report:
    """An HTML report being written: :meth:`add` each Result as it comes, :meth:`close` at the end.

    ``header``: what the page's header lists (model, layer, methods...).  The page is written again
    after ``every`` new images, or after a tenth of the images done so far if that is more (so a run of
    any length writes it O(log n) times more than once every ``every`` images), and by :meth:`close`.
    ``categories``: the model's class names, for ``labels_from_folders``.  ``truth``: each image's true
    class (``{input: index, or why it has none}``, from ``--targets``), read before its folder's name.
    ``records``: one dict per image, of the fields :data:`campp_cli.outputs.report_cards.COLUMNS` names.
    """

    def __init__(self, path: str | os.PathLike, command: str, header: dict, methods: list[str],
                 categories: list[str], total: int, labels_from_folders: bool = False,
                 every: int = DEFAULT_REPORT_EVERY, alpha: float = DEFAULT_ALPHA, truth: dict | None = None):
        check_path(path)
        self.path = Path(path)
        self.assets = assets_folder(self.path)
        self.command = command
        self.header = dict(header)
        self.methods = list(methods)
        self.categories = categories
        self.total = total
        self.truth = truth
        self.labels_from_folders = labels_from_folders or truth is not None  # right and wrong are marked
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
            raise UsageError(f"cannot create {self.assets} ({_reason(exc)})", param="report",
                             value=self.path) from None
        # What a killed run left half-written: its temporary files (of processes no longer running).
        for folder in [self.path.parent, self.assets,
                       *(p for p in self.assets.iterdir() if p.is_dir() and not p.is_symlink())]:
            recover(folder)
        # An earlier page at this path: what --skip-existing skips is shown as that run found it.
        # (input, rank) -> (its record, the slot of its images); rank None but under -l topK and multi-label
        self._earlier: dict[tuple[str, int | None], tuple[dict, int]] = {}
        self._earlier_methods: set[str] = set()
        self._read_earlier()
        self._reserved = {slot for record, slot in self._earlier.values() if "thumb_size" in record}
        self._used: set[int] = set()
        self._next_slot = max([total - 1, *self._reserved], default=-1) + 1

    def _read_earlier(self) -> None:
        """The records of the page a run of the same command left at this path, if any (read from its
        data blob, the page's one source of truth; a page that cannot be read, or of an older format, is no
        earlier run)."""
        try:
            if self.path.is_symlink() or not self.path.is_file():
                return
            match = _DATA_BLOB.search(self.path.read_text(encoding="utf-8", errors="replace"))
            data = json.loads(match.group(1)) if match else None
        except (OSError, ValueError):
            return
        if not isinstance(data, dict) or data.get("command") != self.command:
            return
        records, methods = _cards().read_rows(data), data.get("methods")
        if records is None or not isinstance(methods, list):
            return
        self._earlier_methods = {m for m in methods if isinstance(m, str)}
        for index, record in enumerate(records):
            if record is not None and isinstance(record.get("input"), str) and "class_name" in record:
                slot = record.get("image_slot", index)
                rank = record.get("rank")
                if isinstance(slot, int) and slot >= 0 and (rank is None or isinstance(rank, int)):
                    self._earlier[(record["input"], rank)] = (record, slot)

    def _slot(self, index: int, name: str, rank: int | None = None) -> int:
        """Where the images of the ``index``-th record (of input ``name``, the card of its class of ``rank``)
        go: its earlier images' slot (replaced), else its index unless an earlier record still shown may need
        that one, else a free one."""
        earlier = self._earlier.get((name, rank))
        if earlier is not None and "thumb_size" in earlier[0]:
            slot = earlier[1]
        elif index not in self._reserved and index not in self._used:
            slot = index
        else:
            while self._next_slot in self._reserved or self._next_slot in self._used:
                self._next_slot += 1
            slot = self._next_slot
        self._used.add(slot)
        return slot

    def _as_found_earlier(self, result, index: int, rank: int | None = None) -> dict | None:
        """A skipped result's record (its card of ``rank``) from the earlier page: only for the same methods
        (or more), and only if its comparison figure is still the file that run wrote (same size and
        modification time)."""
        earlier = self._earlier.get((result.input, rank))
        if earlier is None or not result.outputs or not set(self.methods) <= self._earlier_methods:
            return None
        record, slot = earlier
        stamp = record.get("figure_stamp")
        if stamp is None or stamp != _cards().figure_stamp(result.outputs[0]):
            return None
        kept = {k: record[k] for k in _cards().KEPT if k in record}
        if "thumb_size" in kept:
            self._used.add(slot)
            if slot != index:
                kept["image_slot"] = slot
        return kept

    def add(self, result) -> None:
        """Record one image's Result (a failure, a skip or a done image) and write its images."""
        index = len(self.records)
        if result.error is not None:
            self.records.append({"input": result.input, "error": result.error})
        elif result.skipped:  # its cards as the earlier page had them: one, or one per class explained
            ranks = sorted(r for (name, r) in self._earlier if name == result.input and r is not None) or [None]
            for rank in ranks:
                self.records.append(self._skipped_record(result, len(self.records), rank))
        elif result.targets:  # -l topK, a multi-label model: a card per class explained, each with its rank
            cards = result.extra.pop("cards", None) or [None] * len(result.targets)
            ranked = result.extra.get("ranked") or [{}] * len(result.targets)  # evaluate's scores of each
            for rank, ((c, name, p), card, unit) in enumerate(zip(result.targets, cards, ranked), 1):
                result.extra["card"] = card
                result.extra.update(unit)
                record = self._done_record(result, len(self.records), rank)
                record.update(class_index=c, class_name=name, probability=round(p, 6), rank=rank)
                self.records.append(record)
        else:
            self.records.append(self._done_record(result, index))
        done = len(self.records)
        if done - self._written_at >= max(self.every, self._written_at // 10):
            self.write()

    def _skipped_record(self, result, index: int, rank: int | None = None) -> dict:
        """A skipped image's record (its card of ``rank``): what the earlier page found of it, where that still
        holds."""
        record: dict = {"input": result.input, "skipped": 1}
        earlier = self._as_found_earlier(result, index, rank)
        if earlier is not None:
            record.update(earlier)
            if self.labels_from_folders:
                truth, _ = self._true_class(result.input)
                if truth is not None:
                    top5 = record.get("top5")
                    record["true_class"] = self.categories[truth]
                    record["correct"] = int(bool(top5) and top5[0][0] == self.categories[truth])
        return record

    def _done_record(self, result, index: int, rank: int | None = None) -> dict:
        """A done image's record (its card of ``rank``); its card's images written to their slot."""
        record: dict = {"input": result.input, **_cards().result_fields(result)}
        card = result.extra.pop("card", None)  # the bytes go to disk, not into memory for the run
        if card is not None:
            slot = self._slot(index, result.input, rank)
            self._write_assets(slot, card)
            if slot != index:
                record["image_slot"] = slot
            record["thumb_size"] = card["size"]
            if card["disagreement"] is not None:
                record["disagreement"] = round(card["disagreement"], 5)
        if result.outputs:
            stamp = _cards().figure_stamp(result.outputs[0])
            if stamp is not None:
                record["figure_stamp"] = stamp
        if self.labels_from_folders:
            truth, name = self._true_class(result.input)
            if truth is None:
                self.unknown_truth.append((result.input, name))
            else:
                record["true_class"] = self.categories[truth]
                record["correct"] = int(result.top5[0][0] == truth) if result.top5 else 0
        record.update(_cards().score_fields(result.extra))
        return record

    def _true_class(self, source: str) -> tuple[int | None, str]:
        """(the true class of image ``source`` or None, the name it was read from)."""
        if self.truth is not None and source in self.truth:
            found = self.truth[source]
            return (found, self.categories[found]) if isinstance(found, int) else (None, found)
        return _cards().true_class(source, self.categories)

    def _write_assets(self, index: int, card: dict) -> None:
        files = {asset_name(index, "thumb"): card["thumb"], asset_name(index, "photo"): card["photo"],
                 **{asset_name(index, "heatmap", m): data for m, data in card["heatmaps"].items()}}
        for name, data in files.items():
            target = self.assets / name
            try:
                if target.parent.name not in self._folders:
                    if target.parent.is_symlink():
                        raise OSError(40, "a symbolic link (campp never writes through links)")
                    target.parent.mkdir(exist_ok=True)
                    self._folders.add(target.parent.name)
                replace_unsynced(target, data)
            except OSError as exc:
                raise OutputError(f"cannot write {target} ({_reason(exc)}); the run stops here", param="report",
                                  value=self.path) from None

    def document(self, final: bool, summary: dict | None = None) -> dict:
        """The page's data blob: the run's facts, and its records as rows (see report_cards)."""
        counts = {"done": 0, "failed": 0, "skipped": 0}
        for r in self.records:
            if r.get("rank", 1) == 1:  # an image's further classes are more cards, not more images
                counts["failed" if "error" in r else "skipped" if "skipped" in r else "done"] += 1
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
            "asset_names": report_patterns(),
            "truth": self.labels_from_folders,
            **_cards().blob_columns(),
            "records": _cards().as_rows(self.records),
        }
        if summary is not None:
            data["summary"] = _cards().finite(summary)
        if any("scores" in r for r in self.records):
            data["curves"] = _cards().finite(self.mean_curves())
        return data

    def mean_curves(self) -> dict:
        """Each method's mean deletion and insertion curves over the images scored."""
        return _cards().mean_curves(self.records, self.methods)

    def write(self, final: bool = False, summary: dict | None = None) -> None:
        """Write the page now, atomically (readers see the old page or the new one, never a torn one)."""
        blob = json.dumps(self.document(final, summary), ensure_ascii=True, separators=(",", ":"),
                          allow_nan=False, default=_cards().plain)
        blob = blob.replace("<", "\\u003c")  # "<" occurs only inside JSON strings: the script cannot end early
        title = f"campp {self.command}: {self.header.get('model', '')} ({len(self.records)} images)"
        title = title.encode("utf-8", "backslashreplace").decode("utf-8")  # a name that is not valid UTF-8
        page = _template().replace(_DATA_MARK, blob, 1).replace(_TITLE_MARK, html.escape(title), 1)
        try:
            write_atomic(self.path, page.encode("utf-8"))
        except OSError as exc:
            raise OutputError(f"cannot write ({_reason(exc)})", param="report", value=self.path) from None
        self._written_at = len(self.records)

    def close(self, summary: dict | None = None) -> None:
        self.write(final=True, summary=summary)


def _reason(exc: OSError) -> str:
    """What an OSError says went wrong, without its errno and path (the message names the path)."""
    return str(exc.strerror or exc)


def _titles(methods: list[str]) -> dict[str, str]:
    from ..cam.methods import title

    return {m: title(m) for m in methods}


def _template() -> str:
    return resources.files("campp_cli").joinpath("data", _TEMPLATE).read_text(encoding="utf-8")
