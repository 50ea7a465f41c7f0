"""Micro-benchmarks that run inside Windows CPython: the Python-side cost of winiocp per
completion and per submission (system calls stubbed), and Post+GQCS drain rates."""
