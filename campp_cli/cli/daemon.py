"""``campp daemon start|status|stop``: parse, call :mod:`campp_cli.daemon.client`, report."""

from __future__ import annotations

import re
import sys

import click

from .console import echo, say

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def _seconds(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h`` in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text.lower())
    if not match or float(match[1]) <= 0:
        raise click.BadParameter(f"{text!r}: a positive duration such as 90s, 10m or 2h", param_hint="'--idle'")
    return float(match[1]) * _UNITS[match[2]]


def _words(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds}s"


@click.group()
def daemon() -> None:
    """Keep Python, torch and your models warm for one-photo calls (shell loops).

    \b
    While a daemon runs, 'campp classify' and 'campp evaluate' hand their command
    line to it and behave as without it (same files, lines, --jsonl, exit codes,
    Ctrl-C); the call itself imports neither torch nor click. One daemon per user,
    on a Unix socket in a folder only you can open; it stops after --idle without
    a call.
    --no-daemon or CAMPP_DAEMON=off runs a call in its own process;
    CAMPP_DAEMON=auto lets the first call start a daemon.

    \b
      campp daemon start
      for f in images/*.JPEG; do campp classify -f "$f" -q; done
      campp daemon stop
    """


@daemon.command()
@click.option("--idle", default="10m", show_default=True, metavar="DURATION",
              help="Stop after this long without a call (90s, 10m, 2h); its memory (a GPU's too) is freed.")
@click.option("--models", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Models kept loaded, least recently used dropped first.")
@click.option("--max-memory", type=click.IntRange(1, 1 << 20), default=None, metavar="MB",
              help="Most memory the kept models' weights may take together (the newest is always kept).")
def start(idle: str, models: int, max_memory: int | None) -> None:
    """Start the daemon (nothing to do if one of this campp already runs)."""
    from ..daemon.client import start as start_daemon

    info = start_daemon(_seconds(idle), models, max_memory << 20 if max_memory else None)
    verb = "started" if info["started"] else "already running"
    say(f"campp: daemon {verb} (pid {info['pid']}, socket {info['socket']}); it stops after "
        f"{_words(info['idle_after'])} without a call")


@daemon.command()
def status() -> None:
    """Say whether a daemon runs, and what it holds (exit 1 when none runs)."""
    from ..daemon.client import ping
    from ..daemon.paths import socket_path

    info = ping()
    if info is None:
        say(f"campp: no daemon is running (socket {socket_path()})")
        sys.exit(1)
    ident = info["identity"]
    echo(f"pid {info['pid']}, campp {ident['campp']}, Python {ident['python']}, up {_words(info['uptime'])}, "
         f"idle {_words(info['idle_for'])} (stops after {_words(info['idle_after'])} idle)")
    echo(f"socket {info['socket']}")
    running = "none" if info["running"] is None else f"one call of {info['running']} image(s)"
    echo(f"served {info['served']} call(s); running: {running}; waiting: {info['waiting']}")
    echo(f"memory {info['rss'] / 2**20:.0f} MB resident")
    echo(f"models ({len(info['models'])}):")
    for m in info["models"]:
        echo(f"  {m['arch']}, layer {m['layer']}, {m['device']}, {m['bytes'] / 2**20:.1f} MB, weights {m['weights']}")


@daemon.command()
def stop() -> None:
    """Stop the daemon (a call it is running fails with one line)."""
    from ..daemon.client import stop as stop_daemon

    pid = stop_daemon()
    say("campp: no daemon is running" if pid is None else f"campp: daemon (pid {pid}) stopped")
