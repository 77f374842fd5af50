"""A userspace TCP forwarder from the host's loopback into a network namespace of ours.

With real nodes the API server runs inside the cluster's hub namespace (tests/kube/netns.py). The tests,
kubectl, helm and the operator process run in the host namespace; they reach it through this forwarder,
which listens on 127.0.0.1:<port> and opens each outbound connection from a thread that has entered the
hub namespace. That keeps the rule: the host namespace only gets a loopback listener, no route or link.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tests.kube.netns import enter_namespace

_CHUNK = 65536


class NamespaceForwarder:
    """Forwards 127.0.0.1:`port` (host) to `target_host`:`target_port` inside `namespace`."""

    def __init__(self, namespace: str, target_host: str, target_port: int):
        self.namespace = namespace
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"forward-{self.port}", daemon=True)

    def start(self) -> None:
        """Starts accepting connections (in a daemon thread)."""
        self._thread.start()

    def close(self) -> None:
        """Stops accepting; connections in flight end when either side closes."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            # A new thread per connection: it enters the namespace before creating its outbound socket
            # (setns acts on the calling thread only, and this accepting thread stays in the host).
            threading.Thread(target=self._pump, args=(connection,), daemon=True).start()

    def _pump(self, inbound: socket.socket) -> None:
        try:
            enter_namespace(self.namespace)
            outbound = socket.create_connection(self.target, timeout=10)
        except OSError:
            inbound.close()
            return
        outbound.settimeout(None)
        peers = {inbound: outbound, outbound: inbound}
        with selectors.DefaultSelector() as selector, inbound, outbound:
            selector.register(inbound, selectors.EVENT_READ)
            selector.register(outbound, selectors.EVENT_READ)
            open_sides = 2
            while open_sides and not self._closed.is_set():
                for key, _ in selector.select(timeout=1.0):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(_CHUNK)
                    except OSError:
                        return
                    if not data:
                        # Half-close: pass the EOF on and keep the other direction flowing.
                        selector.unregister(source)
                        with contextlib.suppress(OSError):
                            peers[source].shutdown(socket.SHUT_WR)
                        open_sides -= 1
                        continue
                    try:
                        peers[source].sendall(data)
                    except OSError:
                        return
