"""The blocking baseline: one thread per connection, plain ``socket.recv``/``sendall``.

Why: the simplest Windows server anyone writes; at low connection counts the OS does the
scheduling and there is no event machinery at all, so it bounds what an IOCP layer must add
value over.

    python -m bench.servers.thread_echo
"""

from __future__ import annotations

import socket
import threading

from bench.servers.common import announce, control_loop, start_watchdog


def serve_connection(conn: socket.socket) -> None:
    with conn:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return


def accept_loop(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


def main() -> int:
    start_watchdog(600)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    threading.Thread(target=accept_loop, args=(listener,), daemon=True).start()
    host, port = listener.getsockname()[:2]
    announce(host, port)
    control_loop()
    listener.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
