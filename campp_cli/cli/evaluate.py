"""``campp evaluate``: parse, run, print the tables."""

from __future__ import annotations

import click

from .console import echo, say
from .options import engine_options, input_options, model_options, report_options, run_options
from .printer import Printer, run_printed


@click.command()
@input_options
@model_options
@click.option("--steps", type=click.IntRange(2, 4096), default=16, show_default=True,
              help="Deletion/insertion steps (each costs a forward pass per image and method).")
@click.option("--eval-batch", type=click.IntRange(1, 65536), default=None, metavar="N",
              help="Perturbed images per forward pass, across images, steps and methods. Default: 8 on the "
                   "CPU, 256 on CUDA.")
@click.option("--boxes", "boxes", default=None, metavar="DIR",
              help="Pascal VOC XML bounding boxes (ImageNet's or VOC's), one file per image matched by file "
                   "stem: also scores localisation (the paper's Loc, pointing game, energy pointing game).")
@click.option("--delta", "deltas", default="0,0.25,0.5", show_default=True, metavar="LIST",
              help="Thresholds of the paper's Loc (eq. 26) with --boxes.")
@click.option("--road", is_flag=True,
              help="Also score ROAD (Rong et al. 2022): the class probability after removing 10 % to 90 % of "
                   "the pixels, most (MoRF) and least (LeRF) relevant first, filled by noisy linear imputation "
                   "(a sparse solve per image, fraction and order: slower than the other metrics).")
@click.option("--road-fractions", "road_fractions", default=None, metavar="LIST",
              help="ROAD's removal fractions (implies --road). Default: 0.1,0.2,...,0.9.")
@click.option("--sanity", is_flag=True,
              help="Also run the model-randomisation sanity check (Adebayo et al. 2018): every map made again "
                   "as the model's layers are re-initialised from the logits down (cascading) and one at a "
                   "time (independent), compared with the intact model's (Spearman, SSIM, HOG); guided maps "
                   "included. Two passes per layer, mode and batch.")
@click.option("--json", "json", default=None, metavar="FILE", help="Write the summary as JSON.")
@click.option("--csv", "csv", default=None, metavar="FILE", help="Write one row per image and method.")
@click.option("--plot", "plot", default=None, metavar="FILE.png",
              help="Write a PNG of the mean deletion and insertion curves of every method.")
@report_options
@run_options
@engine_options
def evaluate(quiet: bool, files, **params) -> None:
    """Faithfulness of each method (default Grad-CAM and Grad-CAM++) on your model and images.

    \b
    Per method: Average Drop % and Increase in Confidence % (the paper's
    Table 1: how much of the model's confidence the explained region alone
    keeps), Win % of every pair, and RISE's deletion and insertion AUC, each
    with a 95 % bootstrap interval over images. With --boxes: the paper's
    Loc (eq. 26), the pointing game and the energy pointing game. Always: each
    map's Gini sparseness and entropy complexity. With --road: ROAD's MoRF and
    LeRF curves.

    \b
      campp evaluate --arch efficientnet_lite0 -f images/ --boxes images/boxes --json eval.json
    """
    run_printed("evaluate", EvaluatePrinter, quiet, files, params)


class EvaluatePrinter(Printer):
    """Failed images and boxes that could not be used as they come; the tables at the end."""

    def result(self, result) -> None:
        boxes = self.run.planner.boxes_dir
        if result.error is not None:
            say(f"campp: error: {result.error}")
        elif boxes is not None:
            status = result.extra.get("boxes", {}).get("status")
            if status == "no annotation":
                say(f"campp: warning: {result.input}: no annotation in --boxes {boxes} (localisation skipped)")
            elif status == "boxes outside the crop":
                say(f"campp: warning: {result.input}: its boxes of {result.class_name!r} lie outside the "
                    f"centre crop the model sees (localisation skipped)")

    def finished(self, event) -> None:
        from ..commands import evaluate as ev

        document, planner, methods = event.document, self.run.planner, self.run.methods
        echo(ev.format_table(document["methods"]), block=True)
        echo("\n" + ev.format_complexity(document["methods"]), block=True)
        wins = ev.format_wins(document["win_percent"])
        if wins:
            echo("\n" + wins, block=True)
        if planner.annotations is not None:
            echo("\n" + ev.format_localisation({m: document["methods"][m] for m in methods}), block=True)
        if "sanity" in document:
            echo("\n" + ev.format_sanity(document["sanity"]), block=True)
        if self.quiet:
            return
        road = " and ROAD's removals" if "road" in document else ""
        classes = f" and {document['explained_classes'] // max(1, document['images'])} classes" \
            if document["explained_classes"] != document["images"] else ""
        say(f"campp: {document['forward_passes_per_image']} forward passes per image for the metrics "
            f"(O, and deletion and insertion steps{road}, of {len(methods)} methods{classes})")
        if planner.annotations is not None:
            counts = document["boxes"]["images"]
            say("campp: boxes: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
        self.say_report(event.report)
        say(event.summary.line())
