"""The click options the commands share, many derived from the registries (engines' settings, the methods'
settings, the model sources' and presets' names): a setting is declared once, beside the code that reads it."""

from __future__ import annotations

import click

from ..cam.methods import DEFAULT_METHODS, method_settings
from ..cam.targets import ACTIVATIONS, DEFAULT_THRESHOLD, SCORES
from ..models.precision import PRECISIONS
from ..models.preprocessing import PRESETS, RESIZE_MODES
from ..registry import Setting
from ..run.engines import ENGINES, get_engine, list_engines
from ..settings import DEFAULT_MAX_PIXELS, DEFAULT_REPORT_EVERY, MAX_PIXELS_CEILING


def options(*decorators):
    """Apply click options in the order they are listed (so --help lists them so)."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


def setting_option(setting: Setting, users: str = ""):
    """A registered entry's setting as a click option (``users``: who declares it, said in the help)."""
    if setting.kind is bool:  # a flag: --eigen-smooth
        return click.option(setting.flag, setting.name, is_flag=True, default=bool(setting.default),
                            help=setting.help + (f" ({users})" if users else ""))
    if setting.choices is not None:
        kind = click.Choice(list(setting.choices))
    else:
        kind = {int: click.IntRange(setting.minimum, setting.maximum),
                float: click.FloatRange(setting.minimum, setting.maximum)}.get(setting.kind, str)
    help = setting.help + (f" ({users})" if users else "")
    metavar = None if setting.choices is not None else setting.metavar  # a choice lists its values
    return click.option(setting.flag, setting.name, type=kind, default=setting.default, metavar=metavar,
                        show_default=setting.default is not None, help=help)


output_key_option = click.option(
    "--output-key", default=None, metavar="KEY",
    help="Where the logits are when your model's forward returns several outputs: the entry of a dict, Hugging "
         "Face ModelOutput or dataclass, or the index of a tuple. Default: 'logits', or a tuple's first.")

input_options = options(
    click.option("-f", "--file", "files", required=True, multiple=True, metavar="INPUT",
                 help="Photo to explain (JPEG, PNG, BMP, WebP, TIFF, GIF... anything Pillow opens); repeat it, "
                      "or give a folder, a glob pattern, or @list.txt (one path a line; @- reads stdin)."),
    click.option("--recursive", is_flag=True, help="Descend into subfolders of folders given with -f."),
)

gpu_option = click.option(
    "-gpu", "--gpu", "gpu", type=int, default=None, metavar="ID",
    help="CUDA device index; -1 forces the CPU. Default: GPU 0 if CUDA is available, else the CPU. "
         "On a machine without CUDA, an index warns and runs on the CPU.")

precision_option = click.option(
    "--precision", type=click.Choice(list(PRECISIONS)), default=None,
    help="Arithmetic of the model's passes: " + "; ".join(f"{k}: {v}" for k, v in PRECISIONS.items())
         + ". Maps are computed in float64 whatever it is; the README says when half precision is safe. "
           "Default: fp32.")

arch_option = click.option(
    "--arch", default=None, metavar="NAME",
    help="vgg16 (the paper's, the default), efficientnet_lite0, _lite1, _lite2 (offline), any "
         "torchvision classifier by name (resnet50, convnext_tiny, vit_b_16, swin_t...), or "
         "timm:NAME (pip install 'campp[timm]').")

model_option = click.option(
    "--model", "model", default=None, metavar="FILE.py:FUNCTION",
    help="Your own model instead: a function (in a file, or package.module:FUNCTION) that returns "
         "a torch.nn.Module; campp imports and runs that code.")

layer_option = click.option(
    "--layer", default=None, metavar="DOTTED.NAME",
    help="Feature map to explain (see 'campp layers'); several, comma-separated, give each "
         "method's maps of every one fused by LayerCAM's rule. Default: vgg16 features.29 as in "
         "the paper; a transformer's last block's first norm; else the last spatial feature map "
         "before global pooling.")

weights_option = click.option(
    "--weights", default=None, metavar="PATH",
    help="Weights: a state_dict .pth or .safetensors, or for vgg16 the paper's vgg16.npy. Default: "
         "models/, then the torch or timm cache (or the package, for efficientnet_liteN), then a "
         "download; with --model, the model as the function built it.")


def methods_option(default: str | None = ",".join(DEFAULT_METHODS), help: str = "Comma-separated methods, or all "
                   "(see 'campp methods'). Gradient methods share one pass."):
    return click.option("--methods", "methods", default=default, show_default=default is not None, metavar="LIST",
                        help=help)


method_setting_options = options(*[setting_option(s) for s in method_settings()])  # --variant, --eigen-smooth...

input_size_option = click.option(
    "--input-size", type=int, default=None, metavar="N",
    help="Side of the model's square input. Default: the model's own (224 for --model).")

offline_option = click.option(
    "--offline", is_flag=True, envvar="CAMPP_OFFLINE",
    help="Never download weights (also CAMPP_OFFLINE=1).")

model_options = options(
    click.option("-l", "--label", default="-1", show_default=True, metavar="CLASS",
                 help="Class to explain: an index (ImageNet: 0..999) or a class name ('tiger cat', or one of "
                      "--labels); -1 explains the predicted class; true, each photo's own class (from --targets "
                      "or --labels-from-folders); topK (top3), each photo's K most probable classes, a figure row "
                      "each."),
    click.option("--targets", "targets", default=None, metavar="FILE",
                 help="Each photo's class to explain (implies -l true): CSV lines path,class, the path as -f "
                      "gives it, the class an index, a class name or a WordNet id."),
    click.option("--activation", type=click.Choice(list(ACTIVATIONS)), default="softmax", show_default=True,
                 help="How the logits become probabilities: " + "; ".join(
                     f"{k}: {v}" for k, v in ACTIVATIONS.items()) + "."),
    click.option("--threshold", type=click.FloatRange(0, 1), default=None, metavar="P",
                 help=f"With --activation sigmoid: the probability a label must reach to be explained "
                      f"(default {DEFAULT_THRESHOLD}; an image with none: its most probable label)."),
    click.option("--score", type=click.Choice(list(SCORES)), default="logit", show_default=True,
                 help="What the gradient methods (and --guided) differentiate: " + "; ".join(
                     f"{k}: {v}" for k, v in SCORES.items()) + "."),
    gpu_option,
    precision_option,
    arch_option,
    model_option,
    output_key_option,
    layer_option,
    weights_option,
    click.option("--num-classes", type=click.IntRange(1, 10**6), default=None, metavar="N",
                 help="The architecture with a head of N classes (your fine-tuned model; needs --weights)."),
    click.option("--labels", "labels", default=None, metavar="FILE",
                 help="Class names, one a line or a JSON list, one per output of the model."),
    input_size_option,
    click.option("--mean", default=None, metavar="R,G,B|PRESET",
                 help="Normalisation mean, or a preset: " + ", ".join(PRESETS) + " (caffe: BGR, 0..255, minus "
                      "the mean). Default: the model's own (imagenet for --model)."),
    click.option("--std", default=None, metavar="R,G,B", help="Normalisation standard deviation."),
    click.option("--resize", type=click.Choice(list(RESIZE_MODES)), default=None,
                 help="How a photo becomes the square input: " + "; ".join(
                     f"{k}: {v}" for k, v in RESIZE_MODES.items()) + ". Default: crop."),
    methods_option(),
    method_setting_options,
    offline_option,
)

run_options = options(
    click.option("--batch-size", type=click.IntRange(1, 4096), default=None, metavar="N",
                 help="Images per forward/backward pass. Default: 8 on the CPU, 32 on CUDA."),
    click.option("--workers", type=click.IntRange(1, 64), default=None, metavar="N",
                 help="Threads that decode and write while the model runs. Default: min(4, CPU cores)."),
    click.option("-q", "--quiet", is_flag=True,
                 help="Errors only: no top-5, per-image lines, progress bar or summary."),
    click.option("--max-pixels", type=click.IntRange(1, MAX_PIXELS_CEILING), default=DEFAULT_MAX_PIXELS,
                 show_default=True, help="Refuse images with more pixels than this (decompression bombs)."),
    click.option("--no-daemon", is_flag=True,
                 help="Run in this process even if a campp daemon runs (see 'campp daemon'; CAMPP_DAEMON=off "
                      "does the same, CAMPP_DAEMON=auto starts one)."),
)


report_options = options(
    click.option("--report", "report", default=None, metavar="FILE.html",
                 help="Also write an HTML report of the run (opens from disk, no network; its images go in "
                      "FILE_files/): cards to sort and filter, every method's map with an opacity slider."),
    click.option("--report-every", type=click.IntRange(1, 10**9), default=DEFAULT_REPORT_EVERY, show_default=True,
                 metavar="N", help="Rewrite the report during the run every N images (or every tenth of those "
                                   "done, if more), so a stopped run still has one."),
    click.option("--labels-from-folders", is_flag=True,
                 help="Each image's true class is its folder's name (val/n01440764/..., train/cat/...) or a "
                      "WordNet id starting its file name: the report marks right and wrong predictions, and "
                      "-l true explains it."),
)


def _engine_help(name: str) -> str:
    engine = get_engine(name)
    needs = f" (pip install 'campp[{engine.extra}]')" if engine.extra else ""
    return f"{name}, {engine.help}{needs}"


engine_options = options(
    click.option("--engine", type=click.Choice(list_engines()), default="local", show_default=True,
                 help="What runs the work: " + "; ".join(_engine_help(e) for e in list_engines()) + "."),
    *[setting_option(s, "--engine " + " or ".join(ENGINES.users_of(s.name))) for s in ENGINES.settings()],
)

