"""The ``campp`` console script (and ``python -m campp_cli``).

A call that a running daemon serves goes to it before anything heavy is imported, click included: such a
call costs Python and a few standard modules (:func:`campp_cli.daemon.client.forward`).  Every other call
runs here, in :func:`campp_cli.cli.main.main`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from ..daemon.client import forward

    args = sys.argv[1:] if argv is None else list(argv)
    code = forward(args)
    if code is not None:
        sys.exit(code)
    from .main import main as here

    here(argv)
