"""``campp layers``: the feature maps --layer accepts."""

from __future__ import annotations

import click

from .options import output_key_option


@click.command()
@click.option("--arch", default=None, metavar="NAME", help="Architecture to list (default vgg16; timm:NAME).")
@click.option("--model", "model", default=None, metavar="FILE.py:FUNCTION", help="Your own model instead.")
@output_key_option
@click.option("--size", "input_size", type=click.IntRange(8, 8192), default=None, metavar="PIXELS",
              help="Input side for the shapes. Default: the architecture's own (224 for most).")
def layers(arch, model, output_key, input_size) -> None:
    """List the feature maps --layer accepts, with their shapes; '*' marks the default.

    Needs no weights: the shapes come from one forward pass of an untrained model.
    A module that runs several times per pass is listed once per call as NAME@K.
    A transformer's tokens are listed as the grid they form (prefix tokens dropped;
    'tokens+1': one class token), Swin's channels-last maps as 'nhwc'.
    """
    from ..models.layers import default_layer, feature_maps
    from ..models.preprocessing import Overrides
    from ..models.spec import model_spec
    from ..run.run import model_request

    request = model_request(arch, model, input_size=input_size, output_key=output_key)
    spec = model_spec(request["arch"], request["model"], Overrides(size=input_size), request["output_key"])
    module = spec.build().eval()
    side = input_size or spec.input_size
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
