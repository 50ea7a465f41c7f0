"""winiocp's benchmark suite: ``python3 bench/run.py [--quick]`` runs it all (see RESULTS.md).

A package so that the Windows-side scripts (``bench.servers``, ``bench.micro``), which run in
the Wine-provisioned CPython with this checkout on its path, share helpers with each other.
"""
