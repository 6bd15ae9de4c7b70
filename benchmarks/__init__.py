"""The benchmark scripts (each runs as ``python benchmarks/NAME.py``) and the method-comparison harness."""
