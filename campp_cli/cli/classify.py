"""``campp classify``: parse, run, print."""

from __future__ import annotations

import click

from ..cam.methods import needs_any, settings_in_words
from ..cam.targets import is_true
from ..settings import DEFAULT_MAX_SIDE, DEFAULT_OUTPUT_DIR, DISPLAYS, FORMATS
from .console import echo, say
from .options import engine_options, input_options, model_options, report_options, run_options
from .printer import Printer, run_printed


@click.command()
@input_options
@click.option("-o", "--output", default=None, metavar="NAME.jpeg",
              help="Name of the comparison figure (.jpeg, .jpg or .png); the other files are named after it. "
                   "Default: named after the photo (photo.jpg gives photo.jpeg; -o output.jpeg is the paper's "
                   "name); for several, a template with {stem} (default "
                   "{stem}.jpeg).")
@click.option("--output-dir", default=DEFAULT_OUTPUT_DIR, show_default=True, metavar="DIR",
              help="Folder for every output file, created if missing; folders given with -f are mirrored in it.")
@model_options
@click.option("--save-maps", is_flag=True,
              help="Also save each method's low-resolution map as NAME_METHOD.npy.")
@click.option("--guided", is_flag=True,
              help="Also write each method's guided map (NAME_guided_METHOD.jpeg); costs a second, full "
                   "backward pass.")
@click.option("--skip-existing", is_flag=True,
              help="Skip images whose outputs are all there already (resume an interrupted run).")
@click.option("--jsonl", "jsonl", default=None, metavar="FILE",
              help="Write one JSON line per image: input, class, name, probability, top-5, outputs, or error.")
@run_options
@engine_options
@click.option("--max-side", type=click.IntRange(16, 16384), default=DEFAULT_MAX_SIDE, show_default=True,
              help="Largest side of the output panels; bigger photos are shrunk.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Weight of the heatmap in the overlays (0: the photo alone, 1: the heatmap alone).")
@click.option("--format", "format", type=click.Choice(list(FORMATS)), default=None,
              help="Image format of every figure (jpeg, or png: lossless, larger). Default: the one -o names, "
                   "else jpeg.")
@click.option("--display", type=click.Choice(list(DISPLAYS)), default="crop", show_default=True,
              help="What the figures show: " + "; ".join(f"{k}: {v}" for k, v in DISPLAYS.items()) + ".")
@report_options
def classify(quiet: bool, files, **params) -> None:
    # Its help is set below (classify.help): the list of files comes from the output kinds.
    run_printed("classify", ClassifyPrinter, quiet, files, params)


def _help() -> str:
    from ..outputs.kinds import file_list

    rows = file_list()
    width = max(len(name) for name, _ in rows) + 4
    files = "\n".join(f"  {name:<{width}}{what}" for name, what in rows)
    return f"""Explain photos: top-5 classes on stdout, figures per photo in the output folder.

\b
Writes, for -o NAME.jpeg and each METHOD of --methods (default gradcam,gradcampp):
{files}

\b
Several photos (one model load, batched):
  campp classify -f photos/ --recursive --jsonl results.jsonl
  campp classify -f 'val/*.JPEG' -o '{{stem}}_cam.jpeg' --skip-existing
  campp classify -f val/ --recursive --report val.html --labels-from-folders
"""


classify.help = _help()


class ClassifyPrinter(Printer):
    """One photo: its top-5, what was explained and the files written; several: a line per photo."""

    def __init__(self, run, quiet: bool):
        super().__init__(run, quiet)
        self.single = run.single
        self.label = -1

    def wants_bar(self) -> bool:  # one photo gets a bar only when it takes long: extra forward passes
        return not self.single or needs_any(self.run.methods, "forward passes")

    def result(self, result) -> None:
        if result.error is not None:
            if self.single:
                raise result.exception
            say(f"campp: error: {result.error}")
        elif self.single and not self.quiet and not result.skipped:
            self._top5(result)
        elif not self.quiet:
            status = "skipped, outputs exist" if result.skipped else \
                f"{result.class_index} {result.class_name} ({result.probability:.4f})"
            self.above_bar(f"{result.input}: {status} -> {result.outputs[0]}")

    def _top5(self, result) -> None:
        how = "true class" if is_true(self.label) else "predicted class" if self.label == -1 else \
            "class given with -l"
        echo(f"{result.input}: top-5")
        for rank, (c, name, p) in enumerate(result.top5, 1):
            echo(f"  {rank}. {c:4d} {name:<32s} {p:.4f}")
        variants = "".join(f", {label} {value}" for label, value in settings_in_words(self.run.methods,
                                                                                      self.run.settings))
        explained = [(result.class_index, result.class_name, result.probability, how)]
        if result.targets:  # -l topK
            explained = [(c, name, p, f"top {r}") for r, (c, name, p) in enumerate(result.targets, 1)]
        for c, name, p, why in explained:
            echo(f"explained: {c} {name} (p={p:.4f}, {why}, methods {','.join(self.run.methods)}{variants})")
        for path in result.outputs:
            echo(f"wrote {path}")

    def on_loaded(self, event) -> None:
        self.label = event.label
        super().on_loaded(event)

    def finished(self, event) -> None:
        self.say_report(event.report)
        if not self.single and not self.quiet:
            say(event.summary.line())
