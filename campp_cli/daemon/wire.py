"""The messages between a caller and the daemon: ``(kind, *fields)`` tuples, pickled, each after its length.

Both ends are processes of one user (the socket's folder is private and each end checks the other's uid
with ``SO_PEERCRED`` before it reads a message), so a pickle carries nothing the user could not run anyway.
Only plain Python values travel (a command line, a folder, an environment, exit codes, words): the caller
imports nothing to read them.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct

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
