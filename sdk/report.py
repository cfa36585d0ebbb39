"""`edgevla report TELEMETRY`: latency histograms and a timeline from a loop's telemetry file, as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevla.runtime.telemetry import read_telemetry

_SOURCE_COLOURS = {"policy": "tab:green", "held": "tab:orange", "safe": "tab:red"}


def draw_report(telemetry: str | Path, output: str | Path | None = None) -> tuple[Path, str]:
    """Write the PNG (default: next to the telemetry file) and return (path, text summary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, ticks = read_telemetry(telemetry)
    if not ticks:
        raise ValueError(f"{telemetry} holds a header but no ticks: the loop did not run a single tick")
    output = Path(output) if output else Path(telemetry).with_suffix(".png")
    sections = header["sections"]
    times = np.array([t["t_s"] for t in ticks]) - ticks[0]["t_s"]
    durations = {s: np.array([t.get(f"{s}_ms", 0.0) for t in ticks]) for s in sections}
    period_error = np.array([t.get("period_error_ms", np.nan) for t in ticks])
    sources = [t["source"] for t in ticks]

    figure, axes = plt.subplots(3, 1, figsize=(11, 11), gridspec_kw={"height_ratios": [1.1, 1.2, 0.7]})
    hist, timeline, errors = axes
    upper = max(float(np.percentile(np.concatenate(list(durations.values())), 99.9)), 1e-3)
    bins = np.linspace(0, upper, 60)
    for name in sections:
        hist.hist(np.clip(durations[name], 0, upper), bins=bins, histtype="step", linewidth=1.5,
                  label=f"{name}: p50 {np.median(durations[name]):.3f} / p99 {np.percentile(durations[name], 99):.3f} ms")
    hist.set_yscale("log")
    hist.set_xlabel("section duration (ms)")
    hist.set_ylabel("ticks")
    hist.set_title(f"{header.get('robot', '?')} / {header.get('engine', '?')} at "
                   f"{header['hz'] or 'free-running'} Hz: {len(ticks)} ticks")
    hist.legend(fontsize=8)

    bottom = np.zeros(len(ticks))
    for name in sections:
        timeline.fill_between(times, bottom, bottom + durations[name], step="post", label=name, alpha=0.8)
        bottom = bottom + durations[name]
    if header.get("hz"):
        timeline.axhline(1e3 / header["hz"], color="black", linestyle="--", linewidth=1, label="period")
    for source, colour in _SOURCE_COLOURS.items():
        marks = [x for x, s in zip(times, sources) if s == source]
        if marks and source != "policy":
            timeline.plot(marks, np.full(len(marks), -0.02 * bottom.max()), "|", color=colour, markersize=8,
                          label=f"{source} action ({len(marks)} ticks)")
    timeline.set_xlabel("time (s)")
    timeline.set_ylabel("tick work (ms, stacked)")
    timeline.legend(fontsize=8, ncol=3)

    if np.isfinite(period_error).any():
        errors.plot(times, period_error, linewidth=0.8)
        errors.set_ylabel("period error (ms)")
    else:
        errors.text(0.5, 0.5, "free-running loop: no period", ha="center", transform=errors.transAxes)
    errors.set_xlabel("time (s)")
    figure.tight_layout()
    figure.savefig(output, dpi=90)
    plt.close(figure)

    counts = {s: sources.count(s) for s in sorted(set(sources))}
    finite = period_error[np.isfinite(period_error)]
    text = (f"{len(ticks)} ticks; actions {counts}; " +
            (f"period error p99 {np.percentile(finite, 99):.3f} ms, max {finite.max():.3f} ms" if finite.size else
             "free-running"))
    return output, text
