"""Servers built on winiocp: a worker-pool ``Server`` and the echo and HTTP handlers."""

from .base import Server, ServerSummary
from .echo import EchoHandler
from .http import HttpHandler

__all__ = ["EchoHandler", "HttpHandler", "Server", "ServerSummary"]
