"""``campp methods``: the methods --methods accepts."""

from __future__ import annotations

import click


@click.command()
def methods() -> None:
    """List the explanation methods --methods accepts: name, what it costs, reference.

    Gradient methods all come from the same forward and backward pass;
    class-agnostic methods explain the layer, not the class; "not in all":
    a method defined for some models only, which --methods all leaves out.
    """
    from ..cam.methods import get_method, list_methods

    names = list_methods()
    width = max(len(n) for n in names)
    for name in names:
        m = get_method(name)
        kind = ("" if m.class_specific else ", class-agnostic") + ("" if m.in_all else ", not in all")
        click.echo(f"{name:<{width}}  {m.title}: {m.passes}{kind}; {m.reference}")
        if m.summary:
            click.echo(f"{'':<{width}}    {m.summary}")
