"""``campp convert``: weights as a plain state_dict that carries its preprocessing."""

from __future__ import annotations

import click

from ..models.preprocessing import PRESETS, RESIZE_MODES
from .options import output_key_option


@click.command()
@click.argument("source", metavar="SOURCE")
@click.argument("target", metavar="TARGET.pth")
@click.option("--arch", default=None, metavar="NAME", help="Architecture the weights must fit (default vgg16).")
@click.option("--model", "model", default=None, metavar="FILE.py:FUNCTION",
              help="Or your own model (a function returning an nn.Module) they must fit.")
@output_key_option
@click.option("--input-size", type=int, default=None, metavar="N", help="Input side to store.")
@click.option("--mean", default=None, metavar="R,G,B|PRESET", help="Mean to store, or a preset: " + ", ".join(PRESETS))
@click.option("--std", default=None, metavar="R,G,B", help="Standard deviation to store.")
@click.option("--resize", type=click.Choice(list(RESIZE_MODES)), default=None, help="Resize mode to store.")
def convert(source, target, arch, model, output_key, input_size, mean, std, resize) -> None:
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
    from ..io.names import check_convert_target
    from ..run.run import model_request

    check_convert_target(source, target)
    request = model_request(arch, model, None, None, input_size, mean, std, resize, output_key)

    from ..models.weights import convert_weights

    path = convert_weights(source, target, request["arch"], request["preprocessing"], request["model"],
                           request["output_key"])
    click.echo(f"wrote {path}")
