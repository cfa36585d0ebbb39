"""Telemetry written while the loop runs: one JSON object per line, flushed every tick.

The first line is a header (rate, sections, policy, robot); then one line per tick with every section's
duration in ms, the period error, where the action came from (policy, ensemble, held from an older chunk, or
safe) and any events. A crash loses at most the tick being written; `read_telemetry` ignores a torn last line.
"""

from __future__ import annotations

import json
from pathlib import Path


class TelemetryWriter:
    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", buffering=1, encoding="utf-8")  # line-buffered: one flush per tick
        self.write({"type": "header", **header})

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_telemetry(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, tick records); a torn final line (the loop was killed mid-write) is skipped."""
    header, ticks = {}, []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break
            raise ValueError(f"{path}:{number + 1} is not a telemetry record: {line[:80]!r}") from None
        if record.get("type") == "header":
            header = record
        else:
            ticks.append(record)
    if not header:
        raise ValueError(f"{path} has no telemetry header line; was it written by edgevla run --telemetry?")
    return header, ticks
