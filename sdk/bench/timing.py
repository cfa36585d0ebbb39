"""Timing shared by the benchmarks: medians of interleaved runs, so every variant sees the same machine."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def median_ms_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Run each callable once per round, `repeats` rounds; the median wall time of each, in ms."""
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(v)) * 1e3 for name, v in samples.items()}
