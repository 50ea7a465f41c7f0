"""Echo servers the benchmark compares, each run as its own Windows process under Wine.

Every server prints ``listening on HOST:PORT`` once ready and stops when its stdin reaches EOF,
so the host orchestrator (``bench/run.py``) can drive them all the same way.
"""
