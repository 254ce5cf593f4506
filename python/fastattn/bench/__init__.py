"""Benchmarks fastattn against its peers in one run: `python -m fastattn.bench [suite ...]`.

Every case checks each peer's output against fastattn's before timing it, times every
implementation (median of repeated runs after warm-up), and reports the ratio of speeds
(> 1: fastattn is faster) and the fraction of this machine's peak, measured in the same run
with a large matmul (FLOP/s) and a large copy (bytes/s). See benchmarks/README.md.

Modules: cli (arguments, the run), suites (shapes, inputs, work counts), peers (the other
implementations), measure (check, then time, one case), timing (timed calls, peaks),
machine (what ran it), report (table, JSON), plot (--plot).
"""
from .cli import main

__all__ = ["main"]
