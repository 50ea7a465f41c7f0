"""UDP with the typed wrappers: a datagram received with WSARecvFrom and sent back with
WSASendTo, each finished by dequeuing its completion. The client is a stdlib socket.
"""

from __future__ import annotations

import socket
import sys

from winiocp import CompletionPort, Outcome, Socket
from winiocp.constants import SocketType


def main() -> int:
    with CompletionPort() as port, Socket(type=SocketType.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind(("127.0.0.1", 0))
        port.associate(server)
        receiving = server.recvfrom(2048)           # pending until a datagram comes
        client.settimeout(10)
        client.sendto(b"hello, udp", server.getsockname())
        done = port.get(timeout=10)
        if done.outcome is not Outcome.COMPLETED:   # TIMED_OUT, or FAILED (done.failure)
            print("no datagram:", done.outcome)
            return 1
        # .data and .peer are readable once the completion is dequeued.
        peer = receiving.peer
        if peer is None:
            return 1
        server.sendto(receiving.data, peer)
        if port.get(timeout=10).outcome is not Outcome.COMPLETED:
            return 1
        echo, _ = client.recvfrom(2048)
        print("echoed:", echo)
        return 0 if echo == b"hello, udp" else 1


if __name__ == "__main__":
    sys.exit(main())
