"""Speed and memory benchmarks: `python -m benchmarks [--quick] [NAME ...]` (see README.md)."""
