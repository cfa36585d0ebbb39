"""Kernel cost tables: fitting, the file format, and the budget method's latency budget."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgevla.exporters.compress import compress
from edgevla.exporters.cost_table import CostTable, KernelCost, cost_key, cost_units, fit_cost
from edgevla.exporters.packed_layers import PackedLinear
from edgevla.runtime import formats


def test_fit_cost_is_the_least_squares_line():
    rng = np.random.default_rng(0)
    units = np.array([1e6, 4e6, 16e6, 2e6])
    seconds = 20e-6 + 75e-12 * units + rng.normal(0, 1e-6, size=units.size)
    fitted = fit_cost(list(zip(units.tolist(), seconds.tolist())))
    slope, intercept = np.polyfit(units, seconds, 1)
    assert fitted.seconds_per_unit == pytest.approx(slope, rel=1e-9)
    assert fitted.seconds_per_call == pytest.approx(intercept, rel=1e-6)
    flat = fit_cost([(100, 2.0), (200, 1.0)])  # noise tilting the line below zero is clamped
    assert flat.seconds_per_unit == pytest.approx(1.5 / 150) and flat.seconds_per_call == 0.0
    with pytest.raises(ValueError, match="two or more sizes"):
        fit_cost([(100, 1.0), (100, 2.0)])


def test_cost_keys_and_units_follow_the_packed_configuration():
    w = np.random.default_rng(1).normal(size=(8, 40)).astype(np.float32)
    assert cost_key(formats.pack_nm(w, n=1, m=4)) == "nm:1:4"
    assert cost_key(formats.pack_binary(w)) == "binary" and cost_units(formats.pack_binary(w)) == 320
    keep = np.zeros((8, 10), bool)
    keep[:, :3] = True
    gs = formats.pack_group_sparse(w, group=4, keep=keep)
    assert cost_key(gs) == "group_sparse:4" and cost_units(gs) == 8 * 3 * 4


def test_table_file_round_trip_and_clear_errors(tmp_path):
    table = CostTable(target="x86_64/avx2", entries={"binary": KernelCost(seconds_per_call=1e-5, seconds_per_unit=5e-11)})
    table.save(tmp_path / "t.json")
    loaded = CostTable.load(tmp_path / "t.json")
    assert loaded == table
    packed = formats.pack_binary(np.ones((4, 100), np.float32))
    assert loaded.seconds(packed) == pytest.approx(1e-5 + 5e-11 * 400)
    with pytest.raises(ValueError, match=r"no entry for 'nm:2:4' \(it has \['binary'\]\)"):
        loaded.seconds(formats.pack_nm(np.ones((4, 100), np.float32)))
    with pytest.raises(ValueError, match="not an edgevla kernel cost table"):
        CostTable.load({"rows": []})
    bad = table.to_json()
    bad["entries"]["binary"]["seconds_per_unit"] = -1.0
    with pytest.raises(ValueError, match="negative or non-finite"):
        CostTable.load(bad)
    with pytest.raises(FileNotFoundError, match="bench kernels --cost-table"):
        CostTable.load(tmp_path / "missing.json")


def _model():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 3)).eval()


def _predicted_seconds(model, table):
    return sum(table.seconds(m.packed()) for m in model.modules() if isinstance(m, PackedLinear))


def test_budget_method_meets_a_latency_budget_from_a_cost_table():
    model = _model()
    batches = [torch.randn(8, 16) for _ in range(2)]
    candidates = [("nm", {"n": 1, "m": 4, "criterion": "sparsegpt"}), ("nm", {"n": 2, "m": 4, "criterion": "sparsegpt"})]
    # 2:4 is the more accurate choice but (in this made-up table) four times slower per weight than 1:4
    table = CostTable(target="test", entries={"nm:1:4": KernelCost(seconds_per_call=1e-6, seconds_per_unit=1e-9),
                                              "nm:2:4": KernelCost(seconds_per_call=1e-6, seconds_per_unit=4e-9)})
    include = ["2", "4"]
    weights = 2 * 64 * 64
    cheapest = 2e-6 + 1e-9 * weights
    for budget, expected in ((cheapest * 1.01, {"1:4"}), (2e-6 + 4e-9 * weights, {"2:4"}),
                             (2e-6 + 2.7e-9 * weights, {"1:4", "2:4"})):
        result = compress(model, "budget", calibration=batches, include=include, candidates=candidates,
                          budget_seconds=budget, cost_table=table.to_json())
        assert _predicted_seconds(result.model, table) <= budget * (1 + 1e-9)
        assert {f"{m.packed().attrs['n']}:4" for m in result.model.modules() if isinstance(m, PackedLinear)} == expected
    with pytest.raises(ValueError, match="budget_seconds needs cost_table"):
        compress(model, "budget", calibration=batches, include=include, candidates=candidates, budget_seconds=1.0)
    with pytest.raises(ValueError, match="no entry for 'nm:2:4'"):
        compress(model, "budget", calibration=batches, include=include, candidates=candidates, budget_seconds=1.0,
                 cost_table=CostTable(target="t", entries={"nm:1:4": KernelCost(seconds_per_call=0.0,
                                                                                 seconds_per_unit=1e-9)}))


def test_kernel_benchmark_writes_a_table_the_budget_reads(tmp_path):
    from edgevla.bench.kernels import run_kernel_bench

    rows = run_kernel_bench(shapes=((256, 512), (64, 512)), batches=(1,), repeats=3,
                            cost_table_path=tmp_path / "costs.json")
    table = CostTable.load(tmp_path / "costs.json")
    assert set(table.entries) == {"binary", "haar_binary", "nm:2:4", "nm:1:4", "group_sparse:4"}
    assert table.target.startswith("x86_64/")
    assert json.loads((tmp_path / "costs.json").read_text())["kind"] == "edgevla-kernel-costs"
    # the fit is timing-dependent (a shared CI machine); what must hold is that every entry predicts a
    # positive time and that the rows carry the units it was fitted on
    assert all(r["cost_units"] > 0 for r in rows if r["kernel"] in ("b1 fp32", "group-sparse g4"))
    assert table.seconds(formats.pack_binary(np.ones((256, 512), np.float32))) > 0
