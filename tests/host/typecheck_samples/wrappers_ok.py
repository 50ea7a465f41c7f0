"""A correct program against the typed wrappers: mypy --strict and strict pyright accept it (never run)."""

from __future__ import annotations

from winiocp import CompletionPort, Outcome, Socket
from winiocp.connections import CloseReason, Connection
from winiocp.manager import ConnectionManager
from winiocp.servers import EchoHandler, Server


class Echo:
    def data_received(self, connection: Connection, data: bytes) -> None:
        connection.send(data)

    def eof_received(self, connection: Connection) -> None:
        connection.close()

    def connection_lost(self, connection: Connection, reason: CloseReason) -> None:
        print(reason.value)


with CompletionPort(concurrency=2) as port, Socket() as listener:
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    key: int = port.associate(listener)
    accepting = listener.accept(recv_size=0)
    done = port.get(timeout=1.5)
    if done.outcome is Outcome.COMPLETED:
        conn = accepting.accepted
        receiving = conn.recv(4096)
        batch = port.get_many(timeout=0, max_entries=8)
        data: bytes = receiving.data
        conn.send([data, bytearray(b"!"), memoryview(b"?")])
        conn.set_linger(True, 0)

manager = ConnectionManager(close_timeout=2.0, time_wait_avoidance=True)
manager.listen(Socket(), Echo, accepts=4)
manager.run_once(0.1)
summary = Server(EchoHandler, "127.0.0.1", 0, workers=2).serve(duration=0.1)
print(summary.line(), manager.stats.forced_closes, key)
