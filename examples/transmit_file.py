"""Send a file with TransmitFile (``Socket.transmit_file``): the kernel reads the file and
sends it, with optional head and tail bytes, as one overlapped operation.

The server accepts one connection, transmits a temporary file to it and shuts its side down;
a stdlib client in a thread reads to the end and the bytes are compared with the file's.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path

from winiocp import CompletionPort, Handle, Outcome, Socket
from winiocp.constants import Shutdown


def client(address: tuple[str, int], received: list[bytes]) -> None:
    """Read everything the server sends, until its end of file."""
    chunks = []
    with socket.create_connection(address, timeout=10) as sock:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    received.append(b"".join(chunks))


def main() -> int:
    content = os.urandom(256 * 1024)
    head, tail = b"HEAD\n", b"\nTAIL"
    received: list[bytes] = []
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "payload.bin"
        path.write_bytes(content)
        with CompletionPort() as port, Socket() as listener, \
                Handle.open_file(str(path)) as file:   # opened for overlapped reads
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port.associate(listener)
            accepting = listener.accept()
            host, number = listener.getsockname()[:2]
            reader = threading.Thread(target=client, args=((host, number), received))
            reader.start()
            if port.get(timeout=10).outcome is not Outcome.COMPLETED:
                return 1
            with accepting.accepted as conn:
                port.associate(conn)
                # The whole file (count 0), between head and tail; the operation keeps the
                # file and both buffers alive until its completion is dequeued.
                sending = conn.transmit_file(file, head=head, tail=tail)
                done = port.get(timeout=30)
                if done.operation is not sending or done.outcome is not Outcome.COMPLETED:
                    print("TransmitFile failed:", done)
                    return 1
                print("transmitted", done.bytes_transferred, "bytes")
                conn.shutdown(Shutdown.SD_SEND)     # all sent: FIN, the client reads its EOF
                reader.join(10)
    got = received[0] if received else b""
    ok = hashlib.sha256(got).digest() == hashlib.sha256(head + content + tail).digest()
    print(f"client got {len(got)} bytes:", "head, file and tail, as sent" if ok else "NOT as sent")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
