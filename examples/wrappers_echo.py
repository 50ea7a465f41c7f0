"""Echo one message with the typed wrappers: the README's second example, runnable.

A stdlib client connects, sends a line and reads the echo; the server side is a
``CompletionPort`` and ``Socket``s, one AcceptEx, one WSARecv and one WSASend.
"""

from __future__ import annotations

import socket
import sys
import threading

from winiocp import CompletionPort, Outcome, Socket


def client(port: int, result: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello, port")
        result.append(sock.recv(64))


def main() -> int:
    echoed: list[bytes] = []
    with CompletionPort() as port, Socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port.associate(listener)
        accepting = listener.accept()            # AcceptEx; the operation owns its buffers
        peer = threading.Thread(target=client, args=(listener.getsockname()[1], echoed))
        peer.start()
        done = port.get(timeout=5)               # Completion(outcome=COMPLETED, ...)
        assert done.operation is accepting and done.outcome is Outcome.COMPLETED
        with accepting.accepted as conn:         # SO_UPDATE_ACCEPT_CONTEXT already set
            port.associate(conn)
            receiving = conn.recv(4096)          # keep one receive pending (rule 1)
            done = port.get(timeout=5)
            if done.outcome is Outcome.FAILED:   # FALSE + non-NULL: done.failure says why
                print("receive failed:", done.failure, done.exception())
                return 1
            conn.send(receiving.data)
            port.get(timeout=5)                  # the send completed
            peer.join(5)
    print(f"echoed {echoed[0]!r} with the wrappers" if echoed else "no echo")
    return 0 if echoed == [b"hello, port"] else 1


if __name__ == "__main__":
    sys.exit(main())
