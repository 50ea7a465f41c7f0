"""Mistakes a user makes with the wrappers get a clear exception that names the mistake,
raised where the mistake is made, instead of a confusing error later (or none at all)."""

from __future__ import annotations

import gc
import socket
import warnings

import pytest

from winiocp import CompletionPort, Handle, OperationPendingError, Socket

pytestmark = pytest.mark.timeout(60)


def test_send_of_an_int_says_it_needs_bytes() -> None:
    with CompletionPort() as port:
        a, b = socket.socketpair()
        with a, b, Socket.from_stdlib(a) as sock:
            port.associate(sock)
            with pytest.raises(TypeError, match=r"bytes-like .*not int"):
                sock.send(12345)  # type: ignore[arg-type]


def test_get_with_a_str_timeout_says_it_needs_seconds() -> None:
    with CompletionPort() as port:
        with pytest.raises(TypeError, match=r"timeout must be a number of seconds or None, "
                                            r"not str"):
            port.get(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"timeout must be a number of seconds or None"):
            port.get_many(timeout="1")  # type: ignore[arg-type]


def test_completion_port_with_a_float_concurrency_says_it_needs_an_int() -> None:
    with pytest.raises(TypeError, match=r"concurrency must be an int, not float"):
        CompletionPort(2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batch_size must be an int, not float"):
        CompletionPort(batch_size=2.5)  # type: ignore[arg-type]


def test_associate_of_a_stdlib_socket_points_to_from_stdlib_and_borrow() -> None:
    with CompletionPort() as port, socket.socket() as sock:
        with pytest.raises(TypeError, match=r"Socket\.from_stdlib.*Socket\.borrow"):
            port.associate(sock)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"a winiocp Socket or Handle, not int"):
            port.associate(sock.fileno())  # type: ignore[arg-type]
        # The port is not left in use by the refused call: it closes at once.
    assert port.closed


def test_handle_of_an_int_is_refused_at_construction() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exception in __del__ surfaces as a warning
        with pytest.raises(TypeError, match=r"HANDLE.*not int.*ffi\.cast"):
            Handle(12345, "x")  # type: ignore[arg-type]
        gc.collect()


def test_data_of_a_pending_receive_raises_instead_of_reading_as_end_of_file() -> None:
    with CompletionPort() as port:
        a, b = socket.socketpair()
        with a, b, Socket.from_stdlib(a) as sock:
            port.associate(sock)
            receiving = sock.recv(100)
            assert receiving.pending
            with pytest.raises(OperationPendingError, match=r"still pending"):
                receiving.data
            b.sendall(b"hello")
            done = port.get(timeout=10)
            assert done.operation is receiving
            assert receiving.data == b"hello"
