"""evaluate's planner: its --boxes, thresholds and output files checked before any model loads; the
document (tables, --json, --csv, --plot) made from the results at the end."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError, clip
from .planner import Planner

DEFAULT_STEPS = 16
DEFAULT_DELTAS = "0,0.25,0.5"


class EvaluatePlanner(Planner):
    """``steps``: deletion/insertion steps; ``eval_batch``: perturbed images per pass; ``boxes``: a folder of
    Pascal VOC XML files; ``deltas``: Loc's thresholds; ``json``, ``csv``, ``plot``: files to write."""

    def __init__(self, run, steps: int = DEFAULT_STEPS, eval_batch: int | None = None, boxes: str | None = None,
                 deltas: str = DEFAULT_DELTAS, json: str | None = None, csv: str | None = None,
                 plot: str | None = None, road: bool = False, road_fractions=None, sanity: bool = False):

        super().__init__(run)
        p = run.params
        from ..cam.targets import is_multi_label, top_k

        if top_k(p.label) is not None and sanity:
            raise UsageError("{sanity} randomises the model for one explained class per image: give a class, -1 "
                             "or true with it", param="label", value=p.label, also=("sanity",))
        if sanity and is_multi_label(p.activation, p.label):
            raise UsageError("{sanity} randomises the model for one explained class per image, and a multi-label "
                             "model's labels are several: give {label} CLASS or true", param="activation",
                             value=p.activation, also=("sanity", "label"))
        self.check_names(boxes=boxes, json=json, csv=csv, plot=plot, report=p.report, weights=p.weights,
                         labels=p.labels)
        self.steps, self.eval_batch, self.boxes_dir, self.deltas = steps, eval_batch, boxes, deltas
        self.road = parse_fractions(road_fractions) if road or road_fractions is not None else None
        self.sanity = sanity
        self.annotations = None
        self.outputs = {"json": json, "csv": csv, "plot": plot, "report": p.report}
        self.results: list = []

    def plan_jobs(self) -> list:
        from ..io.jsonl import check_writable
        from ..io.names import check_collisions, check_no_overwrite
        from . import boxes as boxes_

        deltas, boxes, plot = self.deltas, self.boxes_dir, self.outputs["plot"]
        self.deltas = boxes_.parse_deltas(deltas) if isinstance(deltas, str) else tuple(deltas)
        self.annotations = boxes_.load_folder(boxes) if boxes is not None else None
        if plot is not None and not str(plot).lower().endswith(".png"):
            raise UsageError("give a .png file name", param="plot", value=plot)
        self.jobs = self.plan(Path("."), None, writes=False)
        self.check_something_exists()
        for param, path in self.outputs.items():
            check_writable(param, path)
        files = [str(f) for f in self.run.params.files]
        check_no_overwrite(self.jobs, [], self.outputs, files)
        check_collisions(self.jobs, [], self.outputs, files, self.report_files())
        self.check_report()
        return self.jobs

    def command(self, clf, options, report, tell):
        from ..draw.figures import figure_caption
        from ..run.events import Note
        from .evaluate import EvaluateCommand

        for note in annotation_notes(self.annotations or {}, clf.categories):
            tell(Note(note))
        road = None
        if self.road is not None:
            from .metrics import RoadSettings
            from .road import noise_in_rgb

            road = RoadSettings(self.road, tuple(float(v) for v in noise_in_rgb(clf.preprocessing)))
        return EvaluateCommand(self.steps, self.eval_batch, self.annotations, self.deltas, clf.input_size,
                               clf.preprocessing.resize, cards=report is not None,
                               caption=figure_caption(clf, options), road=road, sanity=self.sanity,
                               score=options.score, activation=options.activation)

    def take(self, result) -> None:
        self.results.append(result)

    def close(self, clf, options, command, summary) -> dict:
        from ..io.durable import write_atomic
        from . import evaluate as ev

        document = ev.document(self.results, clf, options, self.steps, summary.failed, command)
        json, csv, plot = (self.outputs[k] for k in ("json", "csv", "plot"))
        if json:
            write_atomic(json, ev.json_bytes(document))
        if csv:
            write_atomic(csv, ev.csv_bytes(self.results, self.deltas if self.annotations is not None else None))
        if plot:
            write_atomic(plot, ev.plot_png(self.results))
        return document


def parse_fractions(text) -> tuple[float, ...]:
    """ROAD's removal fractions: a list such as ``0.1,0.5,0.9`` (or numbers), each strictly between 0 and 1;
    None: the paper's 10 % to 90 %."""
    from .road import DEFAULT_FRACTIONS

    if text is None:
        return DEFAULT_FRACTIONS
    parts = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    try:
        values = [float(t) for t in parts if str(t) != ""]
    except ValueError:
        raise UsageError("give fractions of the pixels such as 0.1,0.5,0.9", param="road_fractions",
                         value=text) from None
    if not values or any(not 0 < v < 1 for v in values):
        raise UsageError("each fraction must lie strictly between 0 and 1, such as 0.1,0.5,0.9",
                         param="road_fractions", value=text)
    return tuple(sorted(set(values)))


def annotation_notes(annotations: dict, categories: list[str]) -> list[str]:
    """One warning per annotation file that cannot be used, and per object name that is no class."""
    from .boxes import class_of, closest_names

    notes = []
    for annotation in annotations.values():
        if annotation.problem is not None:
            notes.append(annotation.problem)
            continue
        for name in sorted({b.name for b in annotation.boxes if class_of(b.name, categories) is None}):
            near = closest_names(name, categories)
            hint = f" (closest: {', '.join(near)})" if near else ""
            notes.append(f"{annotation.path}: object name {clip(name)!r} is no class of the model{hint}")
    return notes
