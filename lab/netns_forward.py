"""A TCP forwarder from the host's loopback into one lab namespace (for the Kubernetes API of a lab).

The host namespace gets no route into a lab. To let `kubectl`, the tests and the demo talk to the API server that
runs inside the lab's API node, this module listens on 127.0.0.1 in the host namespace and, for each accepted
connection, opens the upstream connection from *inside* the lab namespace: a helper thread enters the namespace with
setns(2) (network namespaces are per thread) and creates the sockets there; a socket stays in the namespace it was
created in. Nothing is routed, and only the one configured upstream address is reachable.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import selectors
import socket
import threading
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class _NetnsSocketFactory:
    """A thread that lives in the target namespace and connects sockets on request."""

    def __init__(self, netns: str) -> None:
        self._requests: queue.Queue[tuple[tuple[str, int], queue.Queue[socket.socket | BaseException]] | None]
        self._requests = queue.Queue()
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(netns, ready), daemon=True, name=f"netns-{netns}")
        self._thread.start()
        err = ready.get()
        if err is not None:
            raise err

    def _run(self, netns: str, ready: queue.Queue[BaseException | None]) -> None:
        try:
            _setns(f"/run/netns/{netns}")
        except BaseException as exc:  # report to the constructor
            ready.put(exc)
            return
        ready.put(None)
        while (req := self._requests.get()) is not None:
            addr, reply = req
            try:
                reply.put(socket.create_connection(addr, timeout=5))
            except BaseException as exc:
                reply.put(exc)

    def connect(self, addr: tuple[str, int]) -> socket.socket:
        reply: queue.Queue[socket.socket | BaseException] = queue.Queue()
        self._requests.put((addr, reply))
        got = reply.get()
        if isinstance(got, BaseException):
            raise got
        got.settimeout(None)
        return got

    def close(self) -> None:
        self._requests.put(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardSpec:
    netns: str
    upstream: tuple[str, int]
    listen_port: int = 0  # 0 = pick a free port


class NetnsForwarder:
    """Listens on 127.0.0.1:<port> and relays every connection to `upstream` inside `netns`."""

    def __init__(self, spec: ForwardSpec) -> None:
        self.spec = spec
        self._factory = _NetnsSocketFactory(spec.netns)
        self._listener = socket.create_server(("127.0.0.1", spec.listen_port))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="netns-forward")
        self._thread.start()

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = self._factory.connect(self.spec.upstream)
        except OSError:
            client.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(65536)
                    if not data:
                        return
                    dst.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._factory.close()
