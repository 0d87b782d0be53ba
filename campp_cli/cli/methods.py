"""``campp methods``: the methods --methods accepts, and with --measure what each costs on a model."""

from __future__ import annotations

import click

from .options import (
    arch_option,
    gpu_option,
    input_size_option,
    layer_option,
    method_setting_options,
    methods_option,
    model_option,
    offline_option,
    options,
    output_key_option,
    weights_option,
)

measure_options = options(
    click.option("--measure", is_flag=True,
                 help="Time each method on a model instead (the options below): seconds for one image and "
                      "the multiple of the two-map pass (Grad-CAM + Grad-CAM++), median of --repeats calls."),
    arch_option, model_option, output_key_option, input_size_option, layer_option, weights_option, gpu_option,
    offline_option,
    click.option("-f", "--file", "photo", default=None, metavar="PHOTO",
                 help="With --measure: the photo to explain (default: random pixels of seed 0). The "
                      "perturbation methods skip the channels a photo leaves constant, so their cost depends "
                      "on it."),
    methods_option(None, "With --measure: the methods to time, or all. Default: every method but the "
                         "perturbation methods (their extra forward passes grow with the layer's channels)."),
    click.option("--repeats", type=click.IntRange(1, 1000), default=3, show_default=True, metavar="N",
                 help="With --measure: timed calls per method, after one untimed pass."),
    method_setting_options,
)


@click.command()
@measure_options
def methods(measure: bool, arch, model, output_key, input_size, layer, weights, gpu, offline, photo, methods, repeats,
            **settings) -> None:
    """List the explanation methods --methods accepts: name, passes, source.

    Gradient methods all come from the same forward and backward pass;
    class-agnostic methods explain the layer, not the class; "not in all":
    a method defined for some models only, which --methods all leaves out.

    \b
    What each costs on your model (one image; seconds and x the two-map pass):
      campp methods --measure --arch efficientnet_lite0
      campp methods --measure --arch resnet50 --methods scorecam -f photo.jpg
    """
    if not measure:
        _refuse_measure_options()
        _list()
        return
    _measure(arch, model, output_key, input_size, layer, weights, gpu, offline, photo, methods, repeats,
             settings)


def _refuse_measure_options() -> None:
    """An option of --measure given without it would be ignored: a usage error naming it instead."""
    from click.core import ParameterSource

    from ..errors import UsageError

    ctx = click.get_current_context()
    for name in ctx.params:
        if name != "measure" and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            raise UsageError("only with --measure (campp methods lists the methods; --measure times them on a "
                             "model)", param=name)


def _list() -> None:
    from ..cam.methods import get_method, list_methods

    names = list_methods()
    width = max(len(n) for n in names)
    for name in names:
        m = get_method(name)
        kind = ("" if m.class_specific else ", class-agnostic") + ("" if m.in_all else ", not in all")
        click.echo(f"{name:<{width}}  {m.title}: {m.passes}{kind}; {m.reference}")
        if m.summary:
            click.echo(f"{'':<{width}}    {m.summary}")
    click.echo("What each costs on a model: campp methods --measure --arch NAME (or --model FILE.py:FUNCTION)")


def _measure(arch, model, output_key, input_size, layer, weights, gpu, offline, photo, methods, repeats,
             settings) -> None:
    """Check every argument, then load the model, then print each method's cost as it is measured."""
    import os

    from ..cam.cost import BASELINE, default_measured, not_measured
    from ..cam.methods import check_method_settings, parse_methods
    from ..errors import UsageError
    from ..run.run import model_request
    from .main import flags

    names = default_measured() if methods is None else parse_methods(methods)
    settings = check_method_settings({k: v for k, v in settings.items() if v is not None}, names)
    request = model_request(arch, model, input_size=input_size, output_key=output_key)
    if photo is not None and not os.path.isfile(photo):
        raise UsageError("no such file", param="photo", value=photo)

    from ..cam.cost import measure_costs
    from ..models.devices import describe_device, resolve_device
    from ..models.loading import load_classifier
    from .console import say

    device = resolve_device(gpu, warn=lambda text: say(f"campp: {text}"))
    clf = load_classifier(weights=weights, device=device, layer=layer, download=not offline, **request)
    image, what = _image(photo, clf)
    click.echo(f"{clf.arch} at {clf.layer}, {describe_device(clf.device)}: {what} at "
               f"{clf.input_size}x{clf.input_size}, median of {repeats} call{'s' * (repeats > 1)}")
    width = max(len(n) for n in (*names, "two-map pass", f"the {len(names)} in one call"))
    for cost in measure_costs(clf, names, image=image, repeats=repeats, **settings):
        label = "two-map pass" if cost.method == BASELINE else cost.method if "," not in cost.method else \
            f"the {cost.method.count(',') + 1} in one call"
        if cost.refused is not None:
            click.echo(f"  {label:<{width}}  not for this model: {cost.refused.worded(flags('methods'))}")
        else:
            click.echo(f"  {label:<{width}}  {cost.seconds:9.4f} s  {cost.ratio:6.2f}x")
    left = not_measured()
    if methods is None and left:  # the default: every method but these
        click.echo(f"not measured (extra forward passes, one or more per channel): {', '.join(left)}; "
                   f"name them with --methods")


def _image(photo, clf):
    """The RGB input (1, 3, S, S) in [0, 1] and how the header names it: the photo as every command frames
    it, or None (the library's random pixels)."""
    if photo is None:
        return None, "one image of random pixels (seed 0)"
    import torch

    from ..io.decode import open_photo
    from ..run.stages import frame

    rgb, _, _ = open_photo(photo, use=lambda p: frame(p, clf.input_size, clf.preprocessing))
    return torch.from_numpy(rgb)[None], str(photo)
