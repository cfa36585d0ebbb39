"""Timing shared by the benchmarks: medians of interleaved runs, so every variant sees the same machine."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def median_ms_interleaved(runs: dict[str, Callable[[], object]], repeats: int, *, burst: int = 1) -> dict[str, float]:
    """Run each callable once per round (or `burst` times in a row, the first of each burst untimed), `repeats`
    rounds; the median wall time of each, in ms. Rounds interleave the variants so that all of them see the same
    machine; bursts keep each one's weights in cache the way a robot running one policy does (with many models
    in one process, single interleaved calls measure them all with caches the others have just evicted, which
    penalizes the largest model most)."""
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            for i in range(burst + (burst > 1)):
                start = time.perf_counter()
                run()
                if burst == 1 or i > 0:
                    samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(v)) * 1e3 for name, v in samples.items()}
