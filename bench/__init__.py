"""dcron's benchmarks: real nodes on loopback, driven over HTTP like a user.

Each module is a script (``python -m bench.lateness``); ``python -m bench``
runs them all. docs/benchmarks.md says how to read them.
"""
