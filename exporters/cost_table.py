"""Per-target kernel cost tables: what `edgevla bench kernels --cost-table FILE` measures and writes, and what
the `budget` compression method reads to allocate formats under a latency budget (`budget_seconds`).

A table holds, for each kernel configuration (a cost key: `binary`, `haar_binary`, `nm:2:4`, `nm:1:4`,
`group_sparse:4`, ...), a line fitted to batch-1 timings on one CPU: seconds = per call + per unit x units,
where units are the layer's dense weights (N x K), or, for group_sparse, its stored values (the kernel's work
grows with the kept groups, not with K). Tables are measured on the machine they describe: run the benchmark
on the board (or the dev machine for the host target) and pass the file to `budget`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

TABLE_KIND = "edgevla-kernel-costs"
TABLE_VERSION = 1


def cost_key(packed) -> str:
    """The kernel configuration a packed weight runs with (what a cost table is keyed by)."""
    if packed.format == "nm":
        return f"nm:{packed.attrs['n']}:{packed.attrs['m']}"
    if packed.format == "group_sparse":
        return f"group_sparse:{packed.attrs['group']}"
    return packed.format


def cost_units(packed) -> int:
    """Work units of a packed layer: stored values for group_sparse, dense weights (N x K) otherwise."""
    if packed.format == "group_sparse":
        return int(packed.arrays["values"].size)
    return int(packed.out_features * packed.attrs["in_features"])


@dataclass(frozen=True, kw_only=True)
class KernelCost:
    seconds_per_call: float  # fixed cost of one call at batch 1, s
    seconds_per_unit: float  # s per unit (dense weight, or stored value for group_sparse)


@dataclass(kw_only=True)
class CostTable:
    target: str  # what the timings describe, e.g. "x86_64/avx512"
    batch: int = 1  # activation rows per call the timings were taken at
    entries: dict[str, KernelCost] = field(default_factory=dict)

    def seconds(self, packed) -> float:
        """Predicted seconds of one call of this packed layer's kernel."""
        key = cost_key(packed)
        if key not in self.entries:
            raise ValueError(f"the cost table for {self.target} has no entry for {key!r} (it has "
                             f"{sorted(self.entries)}); measure it with `edgevla bench kernels --cost-table FILE` "
                             "or leave that configuration out of the budget candidates")
        entry = self.entries[key]
        return entry.seconds_per_call + entry.seconds_per_unit * cost_units(packed)

    def to_json(self) -> dict:
        return {"kind": TABLE_KIND, "version": TABLE_VERSION, "target": self.target, "batch": self.batch,
                "entries": {key: asdict(value) for key, value in sorted(self.entries.items())}}

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: dict) -> "CostTable":
        if not isinstance(data, dict) or data.get("kind") != TABLE_KIND:
            raise ValueError(f"not an edgevla kernel cost table (expected kind {TABLE_KIND!r}, got "
                             f"{data.get('kind') if isinstance(data, dict) else type(data).__name__!r}); write one "
                             "with `edgevla bench kernels --cost-table FILE`")
        if data.get("version") != TABLE_VERSION:
            raise ValueError(f"cost table version {data.get('version')!r} is not supported (expected "
                             f"{TABLE_VERSION}); measure it again with this edgevla")
        entries = {}
        for key, value in data.get("entries", {}).items():
            entry = KernelCost(**value)
            if not all(math.isfinite(v) and v >= 0 for v in (entry.seconds_per_call, entry.seconds_per_unit)):
                raise ValueError(f"cost table entry {key!r} has a negative or non-finite cost: {value}")
            entries[key] = entry
        return cls(target=str(data.get("target", "?")), batch=int(data.get("batch", 1)), entries=entries)

    @classmethod
    def load(cls, source: "CostTable | dict | Path | str") -> "CostTable":
        """A table from itself, its JSON dict, or a file."""
        if isinstance(source, CostTable):
            return source
        if isinstance(source, dict):
            return cls.from_json(source)
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"cost table {path} does not exist; write it with "
                                    "`edgevla bench kernels --cost-table FILE`")
        return cls.from_json(json.loads(path.read_text()))


def fit_cost(points: list[tuple[int, float]]) -> KernelCost:
    """Least-squares line seconds = a + b * units through (units, seconds) points, a and b clamped at >= 0
    (timing noise on two nearby points can tilt the line below zero)."""
    if len(points) < 2 or len({u for u, _ in points}) < 2:
        raise ValueError(f"fitting a cost line needs timings at two or more sizes, got {points}")
    n = len(points)
    mean_u = sum(u for u, _ in points) / n
    mean_s = sum(s for _, s in points) / n
    slope = sum((u - mean_u) * (s - mean_s) for u, s in points) / sum((u - mean_u) ** 2 for u, _ in points)
    slope = max(slope, 0.0)
    if slope == 0.0:
        slope = mean_s / mean_u
    return KernelCost(seconds_per_call=max(mean_s - slope * mean_u, 0.0), seconds_per_unit=slope)
