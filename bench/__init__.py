"""mmrag's benchmark: ingest throughput and query latency, each measured against its floor in the same run.

Run `python -m bench` from the repository root (`python -m bench --help` for the options); results go to
bench/results/ as results.json and bench.png. Not part of the test suite: numbers depend on the machine,
and nothing here asserts on time. What each number means: bench/run.py.
"""
