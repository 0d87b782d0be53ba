"""The messages between a caller and the daemon: ``(kind, *fields)`` tuples, pickled, each after its length.

Both ends are processes of one user (the socket's folder is private and each end checks the other's uid
with ``SO_PEERCRED`` before it reads a message), so a pickle carries nothing the user could not run anyway.
What the daemon sends its caller is made *portable* first: plain Python values only (numbers, strings,
lists, dicts, campp's dataclasses and errors), so the caller never imports torch or NumPy to read them.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
import struct

from ..errors import CamppError

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30


class Closed(Exception):
    """The other end closed the connection (or died)."""


def _peer(sock: socket.socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end (``SO_PEERCRED``), or None where the system cannot
    say."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))


def peer_uid(sock: socket.socket) -> int | None:
    creds = _peer(sock)
    return creds[1] if creds else None


def peer_pid(sock: socket.socket) -> int | None:
    creds = _peer(sock)
    return creds[0] if creds else None


def send(sock: socket.socket, *message, fds: list[int] | None = None) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    frame = _HEADER.pack(len(data)) + data
    if fds:  # the descriptors travel with the frame's first bytes
        sent = socket.send_fds(sock, [frame[:_HEADER.size]], fds)
        frame = frame[sent:]
    sock.sendall(frame)


def receive(sock: socket.socket, fds: int = 0) -> tuple:
    """The next message; with ``fds``, also the descriptors sent with it (as the tuple's last item)."""
    got: list[int] = []
    try:
        if fds:
            head, got, _flags, _addr = socket.recv_fds(sock, _HEADER.size, fds)
            head += _exactly(sock, _HEADER.size - len(head)) if head else b""
            if not head:
                raise Closed()
        else:
            head = _exactly(sock, _HEADER.size)
        (size,) = _HEADER.unpack(head)
        if size > MAX_MESSAGE:
            raise Closed()
        message = pickle.loads(_exactly(sock, size))
    except BaseException:
        for fd in got:  # a message that did not arrive whole keeps none of the caller's descriptors
            os.close(fd)
        raise
    return (*message, got) if fds else message


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        try:
            chunk = sock.recv(min(n, 1 << 20))
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            raise Closed() from None
        if not chunk:
            raise Closed()
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def portable(value, depth: int = 0):
    """``value`` with what only the daemon's process can read left out: arrays and tensors (figures, maps,
    report images) dropped, NumPy numbers made Python numbers, campp's dataclasses kept (their fields made
    portable); an object with a ``__portable__`` method (the classifier, the report) is what it returns."""
    if depth > 20:
        return None
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()  # np.float64 is a float too: it must not travel as NumPy's
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, (os.PathLike, CamppError)):
        return value
    hook = getattr(value, "__portable__", None)
    if callable(hook) and not isinstance(value, type):
        return hook()
    if isinstance(value, (list, tuple)):
        items = [portable(v, depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {k: portable(v, depth + 1) for k, v in value.items() if _kept(v)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and \
            type(value).__module__.startswith("campp_cli."):
        changes = {f.name: portable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)
                   if f.init}
        return dataclasses.replace(value, **changes)
    return None


def _kept(value) -> bool:
    module = type(value).__module__
    return not (module.startswith(("numpy", "torch", "PIL")) and getattr(value, "ndim", 0)) and \
        not isinstance(value, (bytes, bytearray, memoryview))


class RemoteError(Exception):
    """An unexpected error inside the daemon, as the caller reports it (its type's name and its text)."""

    def __init__(self, type_name: str, text: str):
        super().__init__(type_name, text)
        self.type_name, self.text = type_name, text

    def __str__(self) -> str:
        return self.text


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` as the caller can raise it: campp's own errors and Python's built-in ones as they are, others
    by name and text."""
    if isinstance(exc, CamppError) or type(exc).__module__ == "builtins":
        try:
            return pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an error that does not pickle goes by name
            pass
    return RemoteError(type(exc).__name__, str(exc))
