"""campp classify: figures (and maps, and guided figures) for each image, as the paper's classify.py wrote."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..draw.figures import render
from ..io.formats import is_complete
from ..io.inputs import Job
from ..io.names import output_stem, prepare_output_dir
from ..outputs import kinds
from ..outputs.files import make_output_folder, write_outputs
from ..run.options import Options, Result
from ..run.stages import Command, ExplainedRow, result_of
from ..settings import DEFAULT_OUTPUT

if TYPE_CHECKING:
    import torch

    from ..cam.explain import Explanation
    from ..models.loading import Classifier


class ClassifyCommand(Command):
    """campp classify: figures (and maps, and guided figures) for each image."""

    def __init__(self, options: Options, caption: str = "", cards: bool = False):
        self.options = options
        self.caption = caption  # the strip under each comparison figure: model, layer, variant
        self.cards = cards

    def is_done(self, job: Job) -> "Result | None":
        o = self.options
        paths = job.output_paths(kinds.keys(o.methods, save_maps=o.save_maps, guided=o.guided))
        if self.options.skip_existing and job.error is None and all(is_complete(p) for p in paths):
            return Result(str(job.source), -1, "", 0.0, [], [str(p) for p in paths], skipped=True)
        return None

    def additions(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation) -> list:
        if not self.options.guided:
            return super().additions(clf, rgb01, expl)
        from ..cam.guided import guided_backprop

        return list(guided_backprop(clf.module, rgb01, expl.classes, clf.preprocessing, score=self.options.score))

    def finish(self, row: ExplainedRow, categories: list[str]) -> "Result":
        figures = render(row, categories, row.added, caption=self.caption, alpha=self.options.alpha)
        make_output_folder(row.job)
        written = write_outputs(row.job, figures, row.maps if self.options.save_maps else None)
        return with_card(result_of(row, categories, written), row, figures, self.cards)


def with_card(result: "Result", row: ExplainedRow, figures: dict[str, np.ndarray], cards: bool) -> "Result":
    """``result`` with its --report images (``extra["card"]``) when ``cards``."""
    if cards:
        from ..outputs.report_cards import card_assets

        result.extra["card"] = card_assets(row.photo, figures, row.maps)
    return result


def classify_file(path: str | os.PathLike, clf: Classifier, out_dir: str | os.PathLike,
                  output: str = DEFAULT_OUTPUT, options: Options | None = None) -> Result:
    """The paper's ``classify.py`` for one file: explain, write the five JPEGs, report.

    Raises the image's error (:class:`InputError`, :class:`OutputError`) instead
    of returning it.
    """
    from ..run.engines.local import run

    stem, suffix = output_stem(output)
    out = prepare_output_dir(out_dir)
    results: list[Result] = []
    run([Job(Path(path), out, stem, suffix)], clf, options, results.append)
    if results[0].exception is not None:
        raise results[0].exception
    return results[0]
