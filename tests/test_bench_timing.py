"""The benchmarks' timer: interleaved rounds, optional warm bursts (first call of each burst untimed)."""

import time

from edgevla.bench.timing import median_ms_interleaved


def test_rounds_and_bursts_call_each_variant_as_stated():
    order = []
    runs = {"fast": lambda: order.append("fast"), "slow": lambda: (order.append("slow"), time.sleep(0.002))}
    times = median_ms_interleaved(runs, 2, burst=3)
    assert order == (["fast"] * 4 + ["slow"] * 4) * 2  # a burst of 3 timed calls after one untimed, per round
    assert times["slow"] >= 2.0 > times["fast"]
    order.clear()
    median_ms_interleaved(runs, 3)
    assert order == ["fast", "slow"] * 3
