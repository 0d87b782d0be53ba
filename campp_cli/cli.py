"""The ``campp`` command line: parse, call the library, report.

torch and OpenCV are imported inside the commands, never at module level, so
``campp --help`` and argument errors answer at once.  :func:`main` is the one
place where exceptions become a stderr line and an exit code.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .engines import all_settings, check_settings, get_engine, list_engines, users_of
from .errors import CamppError, OutputError, UsageError, clip
from .labels import check_label_text, read_labels, resolve_label
from .methods import DEFAULT_METHODS
from .preprocessing import PRESETS, RESIZE_MODES, parse_overrides
from .settings import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_REPORT_EVERY,
    DEFAULT_SCORE_BATCH,
    DISPLAYS,
    FORMATS,
    MAX_PIXELS_CEILING,
    VARIANTS,
)

EXIT_USAGE = 2
EXIT_FAILURE = 1
#: Longest line campp prints on stderr (a safety net: each value in a message is clipped much shorter).
MAX_LINE = 20000


def printable(text: str, encoding: str | None = "utf-8") -> str:
    """One line, whatever a file name held: control characters and bytes that are not valid
    text (or not in the stream's encoding) become backslash escapes."""
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    enc = encoding or "utf-8"
    try:
        return text.encode(enc, "backslashreplace").decode(enc)
    except LookupError:
        return text.encode("ascii", "backslashreplace").decode("ascii")


#: Control characters, and the Unicode controls that reorder or break a line on a terminal (bidirectional
#: embeddings, overrides and isolates such as U+202E; the line and paragraph separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _say(message: str) -> None:
    """One line on stderr; nothing if stderr is closed (errors still set the exit code)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        click.echo(printable(clip(message, MAX_LINE), getattr(stream, "encoding", None)), err=True)
    except (OSError, ValueError):
        pass  # stderr itself cannot be written: the exit code still tells


def _echo(message: str, block: bool = False) -> None:
    """One line on stdout (``block``: several, each made printable); a stdout that cannot be written
    ends the run with one line on stderr."""
    stream = sys.stdout
    if stream is None:
        raise OutputError("stdout is closed; the run stops here (use -q, or redirect stdout)")
    encoding = getattr(stream, "encoding", None)
    lines = message.split("\n") if block else [message]
    try:
        click.echo("\n".join(printable(line, encoding) for line in lines))
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise OutputError(f"stdout: cannot write ({reason}); the run stops here") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="campp")
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Explain image classifiers with Grad-CAM, Grad-CAM++ and more CAM methods.

    A PyTorch port of the workflow of the Grad-CAM++ paper's classify.py
    (Chattopadhyay et al., WACV 2018): one photo in, ImageNet VGG16, and
    figures showing where the network looked.

    \b
    Examples:
      campp classify --arch efficientnet_lite0 -f images/chelsea.png   (offline: pip install 'campp[offline]')
      campp classify -f images/chelsea.png -o chelsea.jpeg             (the paper's VGG16; downloads its weights)
      campp evaluate --arch efficientnet_lite0 -f images/ --boxes images/boxes
    """


def _options(*decorators):
    """Apply click options in the order they are listed (so --help lists them so)."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


input_options = _options(
    click.option("-f", "--file", "files", required=True, multiple=True, metavar="INPUT",
                 help="Photo to explain (JPEG, PNG, BMP, WebP, TIFF, GIF... anything Pillow opens); repeat it, "
                      "or give a folder, a glob pattern, or @list.txt (one path a line; @- reads stdin)."),
    click.option("--recursive", is_flag=True, help="Descend into subfolders of folders given with -f."),
)

model_options = _options(
    click.option("-l", "--label", default="-1", show_default=True, metavar="CLASS",
                 help="Class to explain: an index (ImageNet: 0..999) or a class name ('tiger cat', or one of "
                      "--labels); -1 explains the predicted class."),
    click.option("-gpu", "--gpu", "gpu", type=int, default=None, metavar="ID",
                 help="CUDA device index; -1 forces the CPU. Default: GPU 0 if CUDA is available, else the CPU. "
                      "On a machine without CUDA, an index warns and runs on the CPU."),
    click.option("--arch", default=None, metavar="NAME",
                 help="vgg16 (the paper's, the default), efficientnet_lite0, _lite1, _lite2 (offline), any "
                      "torchvision classifier by name (resnet50, convnext_tiny, vit_b_16, swin_t...), or "
                      "timm:NAME (pip install 'campp[timm]')."),
    click.option("--model", "model_ref", default=None, metavar="FILE.py:FUNCTION",
                 help="Your own model instead: a function (in a file, or package.module:FUNCTION) that returns "
                      "a torch.nn.Module; campp imports and runs that code."),
    click.option("--layer", default=None, metavar="DOTTED.NAME",
                 help="Feature map to explain (see 'campp layers'). Default: vgg16 features.29 as in the "
                      "paper; a transformer's last block's first norm; else the last spatial feature map "
                      "before global pooling."),
    click.option("--weights", default=None, metavar="PATH",
                 help="Weights: a state_dict .pth or .safetensors, or for vgg16 the paper's vgg16.npy. Default: "
                      "models/, then the torch or timm cache (or the package, for efficientnet_liteN), then a "
                      "download; with --model, the model as the function built it."),
    click.option("--num-classes", type=click.IntRange(1, 10**6), default=None, metavar="N",
                 help="The architecture with a head of N classes (your fine-tuned model; needs --weights)."),
    click.option("--labels", "labels_path", default=None, metavar="FILE",
                 help="Class names, one a line or a JSON list, one per output of the model."),
    click.option("--input-size", type=int, default=None, metavar="N",
                 help="Side of the model's square input. Default: the model's own (224 for --model)."),
    click.option("--mean", default=None, metavar="R,G,B|PRESET",
                 help="Normalisation mean, or a preset: " + ", ".join(PRESETS) + " (caffe: BGR, 0..255, minus "
                      "the mean). Default: the model's own (imagenet for --model)."),
    click.option("--std", default=None, metavar="R,G,B", help="Normalisation standard deviation."),
    click.option("--resize", type=click.Choice(list(RESIZE_MODES)), default=None,
                 help="How a photo becomes the square input: " + "; ".join(
                     f"{k}: {v}" for k, v in RESIZE_MODES.items()) + ". Default: crop."),
    click.option("--variant", type=click.Choice(VARIANTS), default="official", show_default=True,
                 help="Grad-CAM++ alphas: 'official' as the authors' code (renormalised), 'paper' as eq. 19."),
    click.option("--methods", "methods", default=",".join(DEFAULT_METHODS), show_default=True, metavar="LIST",
                 help="Comma-separated methods, or all (see 'campp methods'). Gradient methods share one pass."),
    click.option("--score-batch", type=click.IntRange(1, 4096), default=DEFAULT_SCORE_BATCH, show_default=True,
                 metavar="N",
                 help="Images per forward pass for methods that need extra passes (Score-CAM)."),
    click.option("--offline", is_flag=True, envvar="CAMPP_OFFLINE",
                 help="Never download weights (also CAMPP_OFFLINE=1)."),
)

run_options = _options(
    click.option("--batch-size", type=click.IntRange(1, 4096), default=None, metavar="N",
                 help="Images per forward/backward pass. Default: 8 on the CPU, 32 on CUDA."),
    click.option("--workers", type=click.IntRange(1, 64), default=None, metavar="N",
                 help="Threads that decode and write while the model runs. Default: min(4, CPU cores)."),
    click.option("-q", "--quiet", is_flag=True,
                 help="Errors only: no top-5, per-image lines, progress bar or summary."),
    click.option("--max-pixels", type=click.IntRange(1, MAX_PIXELS_CEILING), default=DEFAULT_MAX_PIXELS,
                 show_default=True, help="Refuse images with more pixels than this (decompression bombs)."),
)


report_options = _options(
    click.option("--report", "report_path", default=None, metavar="FILE.html",
                 help="Also write an HTML report of the run (opens from disk, no network; its images go in "
                      "FILE_files/): cards to sort and filter, every method's map with an opacity slider."),
    click.option("--report-every", type=click.IntRange(1, 10**9), default=DEFAULT_REPORT_EVERY, show_default=True,
                 metavar="N", help="Rewrite the report during the run every N images (or every tenth of those "
                                   "done, if more), so a stopped run still has one."),
    click.option("--labels-from-folders", is_flag=True,
                 help="With --report: each image's true class is its folder's name (val/n01440764/..., "
                      "train/cat/...) or a WordNet id starting its file name; the report marks right and wrong "
                      "predictions."),
)


def _check_report(report_path, labels_from_folders) -> None:
    from .outputs.report import check_path

    if labels_from_folders and report_path is None:
        raise UsageError("--labels-from-folders marks right and wrong predictions in a report: give --report "
                         "FILE.html too")
    check_path(report_path)


def _report_files(report_path) -> dict:
    """``{"--report FILE.html": FILE_files}``, the folder the report's images go to (never searched for inputs), or
    nothing."""
    if report_path is None:
        return {}
    from .outputs.report import assets_folder

    folder = assets_folder(report_path)
    if folder.is_symlink():  # before the inputs are planned: a link could lead into them
        raise UsageError(f"--report {report_path}: {folder} (where its images go) is a symbolic link; campp never "
                         f"writes through links")
    return {f"--report {report_path}": folder}


def _open_report(report_path, command, clf, options, engine, total, labels_from_folders, every):
    """The --report being written for this run, or None."""
    if report_path is None:
        return None
    import platform
    import shlex
    import time

    import torch

    from .models import describe_device
    from .outputs.report import Report

    here = get_engine(engine).on_this_machine
    obj = click.get_current_context().find_root().obj or {}
    label = options.label
    header = {
        "argv": "campp " + shlex.join(obj.get("argv", sys.argv[1:])),
        "model": clf.arch, "weights": clf.weights_source, "layer": clf.layer, "variant": options.variant,
        "label": "the predicted class" if label == -1 else f"{label} {clf.categories[label]} (-l)",
        "device": describe_device(clf.device) if here else f"--engine {engine}",
        "versions": {"campp": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return Report(report_path, command, header, list(options.methods), clf.categories, total,
                  labels_from_folders, every, options.alpha)


def _run_reported(report, engine, jobs, clf, options, on_result, bar, command=None):
    """_run_with_progress, adding each result to ``report`` (if any) first; on an error or interruption
    the report is still written (marked unfinished) before the error goes on."""
    if report is None:
        return _run_with_progress(engine, jobs, clf, options, on_result, bar, command)

    def each(result) -> None:
        report.add(result)
        on_result(result)

    try:
        return _run_with_progress(engine, jobs, clf, options, each, bar, command)
    except BaseException:
        try:
            report.write()
        except CamppError:
            pass  # the run's own error is the one to report
        raise


def _say_report(report) -> None:
    """Where the report is, and the address to open it at in a browser."""
    _say(f"campp: report {report.path} (images in {report.assets}); open {Path(report.path).absolute().as_uri()}")


def _say_unknown_truth(report) -> None:
    if report is not None and report.unknown_truth:
        path, name = report.unknown_truth[0]
        _say(f"campp: warning: --labels-from-folders: {len(report.unknown_truth)} image(s) have no class named "
             f"by their folder or file name (e.g. {path}: {name!r}); the report leaves them unmarked")


def _setting_option(setting):
    kind = {int: click.IntRange(min=setting.minimum), float: click.FloatRange(min=setting.minimum)}.get(
        setting.kind, str)
    return click.option(setting.flag, setting.name, type=kind, default=None, metavar=setting.metavar,
                        help=f"{setting.help} (--engine {' or '.join(users_of(setting.name))})")


def _engine_help(name: str) -> str:
    engine = get_engine(name)
    needs = f" (pip install 'campp[{engine.extra}]')" if engine.extra else ""
    return f"{name}, {engine.help}{needs}"


engine_options = _options(
    click.option("--engine", type=click.Choice(list_engines()), default="local", show_default=True,
                 help="What runs the work: " + "; ".join(_engine_help(e) for e in list_engines()) + "."),
    *[_setting_option(s) for s in all_settings()],
)


def _engine_settings(engine: str, given: dict, gpu: int | None) -> dict:
    """The settings of ``engine`` among the options given; one it does not take is a usage error."""
    if gpu is not None and not get_engine(engine).on_this_machine:
        raise UsageError(f"-gpu places the model on this machine; --engine {engine} places its own "
                         f"(see --gpus-per-actor)")
    return check_settings(engine, {s.name: given.get(s.name) for s in all_settings()})


def _check_names(**paths) -> None:
    """Usage errors for option values whose folder or file names are longer than filesystems allow."""
    from .inputs import check_name_length

    for option, path in paths.items():
        if path is not None:
            check_name_length(f"--{option.replace('_', '-')}", path)


def _model_request(arch, model_ref, num_classes, labels_path, input_size, mean, std, resize) -> dict:
    """load_classifier's model arguments from the command line, checked before any slow import."""
    if model_ref is not None and arch is not None:
        raise UsageError("give --arch or --model, not both")
    if model_ref is not None and num_classes is not None:
        raise UsageError("--num-classes: your --model function builds its own head; give --labels for names")
    return dict(arch=arch or "vgg16", model=model_ref, num_classes=num_classes,
                labels=read_labels(labels_path) if labels_path is not None else None,
                preprocessing=parse_overrides(input_size, mean, std, resize) or None)


def _check_something_exists(jobs) -> None:
    """A usage error, before torch is imported, when no input exists at all (a mistyped -f): nothing to load
    the model for. One bad path among others fails alone, as any bad image does."""
    if jobs and all(j.error is not None or not os.path.lexists(j.source) for j in jobs):
        first = jobs[0]
        raise UsageError(f"-f {first.error or f'{first.source}: no such file'}")


def _load_model(gpu, weights, layer, offline, quiet, engine="local", label="-1", **request):
    """(The model, -l as a class index): the model on -gpu's device; for an engine that places its own
    models, on this CPU (for its classes, input size and layer, and to check the weights before any work
    is sent out)."""
    from .models import describe_device, load_classifier, resolve_device

    here = get_engine(engine).on_this_machine
    device = resolve_device(gpu if here else -1, warn=_say)
    clf = load_classifier(weights=weights, device=device, layer=layer, download=not offline, **request)
    label = resolve_label(label, clf.categories)
    if not quiet:
        where = describe_device(device) if here else f"--engine {engine}"
        from .stages import layer_label

        _say(f"campp: {clf.arch} on {where}, layer {layer_label(clf.module, clf.layer)}, weights {clf.weights_source}")
    return clf, label


def _progress(count: int, quiet: bool):
    """Progress on stderr (campp_cli.progress): a bar on a terminal, a line every few seconds of a long run on
    a pipe; None with --quiet or a closed stderr."""
    from .progress import Progress

    if quiet or sys.stderr is None:
        return None
    return Progress(count, sys.stderr, _isatty(sys.stderr))


def _clear_bar_line() -> None:
    """Wipe the progress bar's line on the terminal, so that a line printed next takes its place."""
    try:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _pass_counter(bar):
    """``on_passes`` for Options: the bar counts extra forward passes (Score-CAM) as they run, with their ETA."""
    return bar


def _run_with_progress(engine, jobs, clf, options, on_result, bar, command=None):
    """Run ``engine`` (its function and settings), advancing ``bar`` (if any) once per image and always
    closing it."""
    run, settings = engine

    def each(result) -> None:
        if bar is not None:
            bar.update(1)
        on_result(result)

    try:
        return run(jobs, clf, options, each, command=command, **settings)
    finally:
        if bar is not None:
            bar.render_finish()


@cli.command()
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
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default=None,
              help="Image format of every figure (jpeg, or png: lossless, larger). Default: the one -o names, "
                   "else jpeg.")
@click.option("--display", type=click.Choice(list(DISPLAYS)), default="crop", show_default=True,
              help="What the figures show: " + "; ".join(f"{k}: {v}" for k, v in DISPLAYS.items()) + ".")
@report_options
def classify(files, recursive, output, output_dir, label, gpu, arch, model_ref, layer, weights, num_classes,
             labels_path, input_size, mean, std, resize, variant, methods, score_batch, offline, save_maps, guided,
             skip_existing, jsonl, batch_size, workers, quiet, max_pixels, engine, max_side, alpha, fmt, display,
             report_path, report_every, labels_from_folders, **settings) -> None:
    """Explain photos: top-5 classes on stdout, figures per photo in the output folder.

    \b
    Writes, for -o NAME.jpeg and each METHOD of --methods (default gradcam,gradcampp):
      NAME.jpeg                    the input and one panel per method
      NAME_METHOD_heatmap.jpeg     JET heatmap of the method's map
      NAME_METHOD_overlay.jpeg     heatmap blended over the input
      NAME_METHOD.npy              with --save-maps
      NAME_guided_METHOD.jpeg      with --guided

    \b
    Several photos (one model load, batched):
      campp classify -f photos/ --recursive --jsonl results.jsonl
      campp classify -f 'val/*.JPEG' -o '{stem}_cam.jpeg' --skip-existing
      campp classify -f val/ --recursive --report val.html --labels-from-folders
    """
    from .inputs import (
        check_collisions,
        check_no_overwrite,
        folds_case,
        is_single,
        output_keys,
        plan,
        prepare_output_dir,
    )
    from .jsonl import JsonlLog, check_writable
    from .methods import needs_any, parse_methods

    # Argument checks that need no model come first: they must be instant.
    settings = _engine_settings(engine, settings, gpu)
    methods = parse_methods(methods)
    check_label_text(label)
    _check_names(jsonl=jsonl, report=report_path, output_dir=output_dir, weights=weights, labels=labels_path)
    request = _model_request(arch, model_ref, num_classes, labels_path, input_size, mean, std, resize)
    single = is_single(list(files))
    keys = output_keys(methods, save_maps, guided)
    report_files = _report_files(report_path)
    jobs = plan(list(files), Path(output_dir), output, recursive, keys=keys, fmt=fmt, exclude=report_files.values())
    _check_something_exists(jobs)
    named = {"--jsonl": jsonl, "--report": report_path}
    check_no_overwrite(jobs, keys, named, list(files))
    check_collisions(jobs, keys, named, list(files), report_files, folds=folds_case(output_dir))
    check_writable("--jsonl", jsonl)
    if report_path is not None and os.path.dirname(os.path.abspath(report_path)) == os.path.abspath(output_dir):
        prepare_output_dir(output_dir)  # --report output/report.html: the output folder is made for it
    _check_report(report_path, labels_from_folders)
    prepare_output_dir(output_dir)
    log = JsonlLog(jsonl) if jsonl else None
    if log is not None:
        click.get_current_context().call_on_close(log.close)  # also when the model fails to load

    from .engines import load_engine
    from .pipeline import ClassifyCommand, Options
    from .stages import figure_caption

    run = load_engine(engine)
    # One photo explained in one pass (--guided's runs with gradients, never packed): oneDNN's copy of the
    # weights would cost more than it saves; Score-CAM's many passes pay for it.
    prepack = not single or needs_any(methods, "forward passes")
    clf, label = _load_model(gpu, weights, layer, offline, quiet, engine, label, prepack=prepack, **request)
    options = Options(label=label, variant=variant, methods=methods, score_batch=score_batch, max_side=max_side,
                      max_pixels=max_pixels, save_maps=save_maps, guided=guided, batch_size=batch_size,
                      skip_existing=skip_existing, alpha=alpha, display=display)
    if workers:
        options.workers = workers
    report = _open_report(report_path, "classify", clf, options, engine, len(jobs), labels_from_folders,
                          report_every)
    command = ClassifyCommand(options, figure_caption(clf, options), cards=report is not None)
    how = "predicted class" if label == -1 else "class given with -l"
    # One photo gets a bar only when it takes long: methods with extra forward passes.
    bar = None if single and not needs_any(methods, "forward passes") else _progress(len(jobs), quiet)
    options.on_passes = _pass_counter(bar)
    per_image_lines = not single and not quiet
    # stdout and the bar on one terminal: each line is printed above the bar, which is drawn again below it.
    above_bar = bar is not None and bar.tty and _isatty(sys.stdout)

    def on_result(result) -> None:
        if log is not None:
            log.write(result.as_dict())
        if result.error is not None:
            if single:
                raise result.exception
            _say(f"campp: error: {result.error}")
        elif single and quiet:
            return  # errors only
        elif single:
            _echo(f"{result.input}: top-5")
            for rank, (c, name, p) in enumerate(result.top5, 1):
                _echo(f"  {rank}. {c:4d} {name:<32s} {p:.4f}")
            _echo(f"explained: {result.class_index} {result.class_name} (p={result.probability:.4f}, "
                  f"{how}, methods {','.join(methods)}, Grad-CAM++ variant {variant})")
            for path in result.outputs:
                _echo(f"wrote {path}")
        elif per_image_lines:
            status = "skipped, outputs exist" if result.skipped else \
                f"{result.class_index} {result.class_name} ({result.probability:.4f})"
            line = f"{result.input}: {status} -> {result.outputs[0]}"
            if above_bar:
                _clear_bar_line()
                _echo(line)
                bar.render_progress()
            else:
                _echo(line)

    summary = _run_reported(report, (run, settings), jobs, clf, options, on_result, bar, command)
    if report is not None:
        report.close()
        _say_unknown_truth(report)
        if not quiet:
            _say_report(report)
    if not single and not quiet:
        _say(summary.line())
    if summary.failed:
        sys.exit(EXIT_FAILURE)


@cli.command()
@input_options
@model_options
@click.option("--steps", type=click.IntRange(2, 4096), default=16, show_default=True,
              help="Deletion/insertion steps (each costs a forward pass per image and method).")
@click.option("--eval-batch", type=click.IntRange(1, 65536), default=None, metavar="N",
              help="Perturbed images per forward pass, across images, steps and methods. Default: 32 on the "
                   "CPU, 256 on CUDA.")
@click.option("--boxes", "boxes_dir", default=None, metavar="DIR",
              help="Pascal VOC XML bounding boxes (ImageNet's or VOC's), one file per image matched by file "
                   "stem: also scores localisation (the paper's Loc, pointing game, energy pointing game).")
@click.option("--delta", "deltas", default="0,0.25,0.5", show_default=True, metavar="LIST",
              help="Thresholds of the paper's Loc (eq. 26) with --boxes.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the summary as JSON.")
@click.option("--csv", "csv_path", default=None, metavar="FILE", help="Write one row per image and method.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Write a PNG of the mean deletion and insertion curves of every method.")
@report_options
@run_options
@engine_options
def evaluate(files, recursive, label, gpu, arch, model_ref, layer, weights, num_classes, labels_path, input_size,
             mean, std, resize, variant, methods, score_batch, offline, steps, eval_batch, boxes_dir, deltas,
             json_path, csv_path, plot_path, report_path, report_every, labels_from_folders, batch_size, workers,
             quiet, max_pixels, engine, **settings) -> None:
    """Faithfulness of each method (default Grad-CAM and Grad-CAM++) on your model and images.

    \b
    Per method: Average Drop % and Increase in Confidence % (the paper's
    Table 1: how much of the model's confidence the explained region alone
    keeps), Win % of every pair, and RISE's deletion and insertion AUC, each
    with a 95 % bootstrap interval over images. With --boxes: the paper's
    Loc (eq. 26), the pointing game and the energy pointing game.

    \b
      campp evaluate --arch efficientnet_lite0 -f images/ --boxes images/boxes --json eval.json
    """
    from . import boxes
    from .inputs import check_collisions, check_no_overwrite, plan
    from .jsonl import check_writable
    from .methods import parse_methods

    settings = _engine_settings(engine, settings, gpu)
    methods = parse_methods(methods)
    check_label_text(label)
    _check_names(boxes=boxes_dir, json=json_path, csv=csv_path, plot=plot_path, report=report_path, weights=weights,
                 labels=labels_path)
    request = _model_request(arch, model_ref, num_classes, labels_path, input_size, mean, std, resize)
    deltas = boxes.parse_deltas(deltas)
    annotations = boxes.load_folder(boxes_dir) if boxes_dir is not None else None
    if plot_path is not None and not plot_path.lower().endswith(".png"):
        raise UsageError(f"--plot {plot_path}: give a .png file name")
    report_files = _report_files(report_path)
    jobs = plan(list(files), Path("."), None, recursive, writes=False, exclude=report_files.values())
    _check_something_exists(jobs)
    outputs = {"--json": json_path, "--csv": csv_path, "--plot": plot_path, "--report": report_path}
    for option, path in outputs.items():
        check_writable(option, path)
    check_no_overwrite(jobs, [], outputs, list(files))
    check_collisions(jobs, [], outputs, list(files), report_files)
    _check_report(report_path, labels_from_folders)

    from . import evaluate as ev
    from .engines import load_engine
    from .images import write_atomic
    from .pipeline import Options
    from .stages import figure_caption

    run = load_engine(engine)
    clf, label = _load_model(gpu, weights, layer, offline, quiet, engine, label, **request)
    options = Options(label=label, variant=variant, methods=methods, score_batch=score_batch, max_pixels=max_pixels,
                      batch_size=batch_size)
    if workers:
        options.workers = workers
    results = []
    bar = _progress(len(jobs), quiet)
    options.on_passes = _pass_counter(bar)

    def on_result(result) -> None:
        if result.error is not None:
            _say(f"campp: error: {result.error}")
        elif annotations is not None:
            status = result.extra.get("boxes", {}).get("status")
            if status == "no annotation":
                _say(f"campp: warning: {result.input}: no annotation in --boxes {boxes_dir} (localisation skipped)")
            elif status == "boxes outside the crop":
                _say(f"campp: warning: {result.input}: its boxes of {result.class_name!r} lie outside the "
                     f"centre crop the model sees (localisation skipped)")
        results.append(result)

    if annotations is not None:
        _check_annotations(annotations, clf.categories)
    report = _open_report(report_path, "evaluate", clf, options, engine, len(jobs), labels_from_folders,
                          report_every)
    command = ev.EvaluateCommand(steps, eval_batch, annotations, deltas, clf.input_size, clf.preprocessing.resize,
                                 cards=report is not None, caption=figure_caption(clf, options))
    summary = _run_reported(report, (run, settings), jobs, clf, options, on_result, bar, command)
    document = ev.report(results, clf, options, steps, summary.failed, command)
    if report is not None:
        report.close(summary=document)
        _say_unknown_truth(report)
    _echo(ev.format_table(document["methods"]), block=True)
    wins = ev.format_wins(document["win_percent"])
    if wins:
        _echo("\n" + wins, block=True)
    if annotations is not None:
        _echo("\n" + ev.format_localisation({m: document["methods"][m] for m in methods}), block=True)
    if json_path:
        write_atomic(json_path, ev.json_bytes(document))
    if csv_path:
        write_atomic(csv_path, ev.csv_bytes(results, deltas if annotations is not None else None))
    if plot_path:
        write_atomic(plot_path, ev.plot_png(results))
    if not quiet:
        _say(f"campp: {document['forward_passes_per_image']} forward passes per image for the metrics "
             f"(O, and deletion and insertion steps, of {len(methods)} methods)")
        if annotations is not None:
            counts = document["boxes"]["images"]
            _say("campp: boxes: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
        if report is not None:
            _say_report(report)
        _say(summary.line())
    if summary.failed:
        sys.exit(EXIT_FAILURE)


def _check_annotations(annotations: dict, categories: list[str]) -> None:
    """One warning per annotation file that cannot be used, and per object name that is no class."""
    from .boxes import class_of, closest_names

    for annotation in annotations.values():
        if annotation.problem is not None:
            _say(f"campp: warning: {annotation.problem}")
            continue
        for name in sorted({b.name for b in annotation.boxes if class_of(b.name, categories) is None}):
            near = closest_names(name, categories)
            hint = f" (closest: {', '.join(near)})" if near else ""
            _say(f"campp: warning: {annotation.path}: object name {clip(name)!r} is no class of the model{hint}")


@cli.command()
def methods() -> None:
    """List the explanation methods --methods accepts: name, what it costs, reference.

    Gradient methods all come from the same forward and backward pass;
    class-agnostic methods explain the layer, not the class.
    """
    from .methods import get_method, list_methods

    names = list_methods()
    width = max(len(n) for n in names)
    for name in names:
        m = get_method(name)
        kind = "" if m.class_specific else ", class-agnostic"
        click.echo(f"{name:<{width}}  {m.title}: {m.passes}{kind}; {m.reference}")
        if m.summary:
            click.echo(f"{'':<{width}}    {m.summary}")


@cli.command()
@click.option("--arch", default=None, metavar="NAME", help="Architecture to list (default vgg16; timm:NAME).")
@click.option("--model", "model_ref", default=None, metavar="FILE.py:FUNCTION", help="Your own model instead.")
@click.option("--size", type=click.IntRange(8, 8192), default=None, metavar="PIXELS",
              help="Input side for the shapes. Default: the architecture's own (224 for most).")
def layers(arch, model_ref, size) -> None:
    """List the feature maps --layer accepts, with their shapes; '*' marks the default.

    Needs no weights: the shapes come from one forward pass of an untrained model.
    A module that runs several times per pass is listed once per call as NAME@K.
    A transformer's tokens are listed as the grid they form (prefix tokens dropped;
    'tokens+1': one class token), Swin's channels-last maps as 'nhwc'.
    """
    from .models import default_layer, feature_maps, model_spec
    from .preprocessing import Overrides

    request = _model_request(arch, model_ref, None, None, size, None, None, None)
    spec = model_spec(request["arch"], request["model"], Overrides(size=size))
    module = spec.build().eval()
    side = size or spec.input_size
    chosen = default_layer(spec, module, size=side)
    click.echo(f"{spec.name}: feature maps for a {side}x{side} input (C x H x W)")
    maps = feature_maps(module, side)
    name_w = max([40] + [len(fm.layer) for fm in maps])  # one column, however long the names
    c_w = max([5] + [len(str(fm.shape[0])) for fm in maps])
    dim_w = max([3] + [len(str(d)) for fm in maps for d in fm.shape[1:]])
    for fm in maps:
        mark = "*" if fm.layer == chosen else " "
        c, h, w = fm.shape
        layout = "" if fm.layout == "nchw" else f"  ({fm.layout})"
        click.echo(f"{mark} {fm.layer:<{name_w}s} {c:{c_w}d} x {h:{dim_w}d} x {w:{dim_w}d}{layout}")


@cli.command()
@click.argument("source", metavar="SOURCE")
@click.argument("target", metavar="TARGET.pth")
@click.option("--arch", default=None, metavar="NAME", help="Architecture the weights must fit (default vgg16).")
@click.option("--model", "model_ref", default=None, metavar="FILE.py:FUNCTION",
              help="Or your own model (a function returning an nn.Module) they must fit.")
@click.option("--input-size", type=int, default=None, metavar="N", help="Input side to store.")
@click.option("--mean", default=None, metavar="R,G,B|PRESET", help="Mean to store, or a preset: " + ", ".join(PRESETS))
@click.option("--std", default=None, metavar="R,G,B", help="Standard deviation to store.")
@click.option("--resize", type=click.Choice(list(RESIZE_MODES)), default=None, help="Resize mode to store.")
def convert(source, target, arch, model_ref, input_size, mean, std, resize) -> None:
    """Convert weights to a plain state_dict that carries its preprocessing.

    SOURCE: the paper's vgg16.npy (a pickle, read with an unpickler that admits
    only arrays), a .pth or a .safetensors file. The .pth written holds tensors
    and the model's preprocessing (for vgg16.npy the Caffe one: BGR, 0..255,
    mean subtraction; else the architecture's, changed by --input-size, --mean,
    --std, --resize), so later runs read it with weights_only=True and need no
    preprocessing options:

    \b
      campp convert models/vgg16.npy models/vgg16_caffe.pth
      campp classify -f images/chelsea.png --weights models/vgg16_caffe.pth
      campp convert w.pth mine.pth --model net.py:build --input-size 64 --mean none
    """
    from .inputs import check_convert_target

    check_convert_target(source, target)
    request = _model_request(arch, model_ref, None, None, input_size, mean, std, resize)

    from .models import convert_weights

    path = convert_weights(source, target, request["arch"], request["preprocessing"], request["model"])
    click.echo(f"wrote {path}")


def flags() -> dict[str, str]:
    """Each parameter's flag, for errors that name a parameter (``param="label"`` -> ``-l``): every command's
    options by their click name (``files`` -> ``-f``) and by the keyword their long flag spells (``--model``
    is ``model``, as the library calls it)."""
    found: dict[str, str] = {}
    for command in cli.commands.values():
        for param in command.params:
            if not isinstance(param, click.Option) or not param.opts:
                continue
            found.setdefault(param.name, param.opts[0])
            for opt in param.opts:
                if opt.startswith("--"):
                    found.setdefault(opt[2:].replace("-", "_"), param.opts[0])
    return found


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _silence_library_chatter() -> None:
    """C libraries (libtiff, libpng...) print warnings straight to file descriptor 2, past Python.

    Point descriptor 2 at /dev/null and give Python's stderr a private copy of
    the real one, so campp's own lines still arrive and the chatter does not.
    ``--debug`` keeps it.  Does nothing where stderr is not a real descriptor
    (closed, or captured by a test harness).
    """
    stream = sys.stderr
    try:
        fd = stream.fileno()
        if fd != 2:
            return
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        os.close(saved)
        return
    stream.flush()
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = open(saved, "w", encoding=stream.encoding, errors="backslashreplace",  # noqa: SIM115
                      buffering=1, closefd=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turn every error into one line and an exit code.

    Exit codes: 0 done, 1 a failure at run time (an image, a file, the model),
    2 a usage error, 130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args or os.environ.get("CAMPP_DEBUG", "") not in ("", "0")
    if not debug:
        # Library warnings (deprecations, initialisation notes) would break the one-line contract.
        warnings.simplefilter("ignore")
        if argv is None:  # the console script, not a test calling main() in its own process
            _silence_library_chatter()
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        pass
    try:
        code = cli.main(args=args, prog_name="campp", standalone_mode=False, obj={"argv": args})
    except click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "campp"
        _say(f"{where}: error: {exc.format_message()} (see '{where} --help')")
        code = EXIT_USAGE
    except (click.exceptions.Abort, KeyboardInterrupt):
        _say("campp: aborted (interrupted); every output file on disk is complete")
        code = 130
    except Terminated:
        _say("campp: aborted (terminated); every output file on disk is complete")
        code = 143
    except click.ClickException as exc:
        _say(f"campp: error: {exc.format_message()}")
        code = exc.exit_code
    except CamppError as exc:
        if debug:
            raise
        _say(f"campp: error: {exc.worded(flags())}")
        code = exc.exit_code
    except BrokenPipeError:
        code = EXIT_FAILURE
    except MemoryError:
        _say("campp: error: out of memory (try a smaller --batch-size or --workers)")
        code = EXIT_FAILURE
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            # A safety net: names are checked before the run, but one can also be made during it.
            where = f"{clip(exc.filename)}: " if exc.filename is not None else ""
            _say(f"campp: error: {where}a file or folder name is longer than the filesystem allows (at most "
                 f"255 bytes a name)")
        else:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _say(f"campp: internal error: {type(exc).__name__}: {clip(text)} (rerun with --debug for the "
                 f"traceback)")
        code = EXIT_FAILURE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code if isinstance(code, int) else 0)
