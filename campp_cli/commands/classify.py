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
        paths = job.output_paths(kinds.keys(o.labels(), save_maps=o.save_maps, guided=o.guided))
        if self.options.skip_existing and job.error is None and all(is_complete(p) for p in paths):
            return Result(str(job.source), -1, "", 0.0, [], [str(p) for p in paths], skipped=True)
        return None

    def additions(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation, ranked=None) -> list:
        """--guided: each image's guided gradient, or under ``-l topK`` the list of each rank's."""
        if not self.options.guided:
            return super().additions(clf, rgb01, expl)
        from ..cam.guided import guided_backprop

        def guided(classes):
            return list(guided_backprop(clf.module, rgb01, classes, clf.preprocessing, score=self.options.score,
                                        activation=self.options.activation))

        if ranked is None:
            return guided(expl.classes)
        per_rank = [guided(e.classes) for e in ranked]  # a multi-label image keeps its own ranks' (finish)
        return [list(ranks) for ranks in zip(*per_rank)]

    def finish(self, row: ExplainedRow, categories: list[str]) -> "Result":
        ranked = self.options.ranked
        figures = render(row, categories, row.added, caption=self.caption, alpha=self.options.alpha, ranked=ranked)
        make_output_folder(row.job)
        written = write_outputs(row.job, figures, row.labelled_maps(ranked) if self.options.save_maps else None)
        result = result_of(row, categories, written)
        if ranked:
            result.targets = [(c, categories[c], float(row.probs[c])) for c, _ in row.targets]
        return with_card(result, row, figures, self.cards, ranked)


def with_card(result: "Result", row: ExplainedRow, figures: dict[str, np.ndarray], cards: bool,
              ranked: bool = False) -> "Result":
    """``result`` with its --report images (``extra["card"]``) when ``cards``; when ``ranked`` (``-l topK``, a
    multi-label model), those of each class explained (``extra["cards"]``, in rank order)."""
    if cards:
        from ..cam.targets import rank_label
        from ..outputs.report_cards import card_assets

        if not ranked:
            result.extra["card"] = card_assets(row.photo, figures, row.maps)
            return result
        def rank_figures(rank: int, maps: dict) -> dict:  # its heatmaps under the methods' keys
            return {**figures, **{kinds.key("heatmap", m): figures[kinds.key("heatmap", rank_label(rank, m))]
                                  for m in maps}}

        # A card per class explained: its own heatmaps, the comparison's thumbnail.
        result.extra["cards"] = [card_assets(row.photo, rank_figures(r, maps), maps)
                                 for r, (_, maps) in enumerate(row.targets, 1)]
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
