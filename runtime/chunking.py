"""Action chunks: which action goes out at which tick, and inference that runs while a chunk executes.

A chunk predicted from the observation of tick t holds the actions for ticks t, t+1, ..., t+H-1. The
`ActionQueue` keeps the chunks that still cover the future and, for each tick, returns the newest chunk's
action or a temporal ensemble of all chunks covering that tick (ACT's exponential weighting, w_i =
exp(-decay * i) with i = 0 the oldest prediction). `AsyncInference` runs the policy in a worker thread so
the loop keeps ticking on time: a chunk that arrives late still lines up with the clock (its stale head is
skipped), and while it is late the old chunk keeps executing; when that runs out the loop sends the safe action.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

ENSEMBLES = ("none", "exponential")
MODES = ("sync", "async")


@dataclass(frozen=True, kw_only=True)
class ChunkingConfig:
    """How predicted chunks turn into per-tick actions."""

    mode: str = "sync"  # "sync": infer inside the tick; "async": infer in a worker thread while the chunk executes
    execute_horizon: int = 1  # ticks between inference requests (actions of one chunk used before the next is due)
    ensemble: str = "none"  # "none": newest chunk only; "exponential": ACT-style temporal ensembling
    ensemble_decay: float = 0.01  # ACT's m: weight exp(-m * i) for the i-th oldest prediction of a tick

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"chunking mode must be one of {MODES}, got {self.mode!r}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")
        if self.execute_horizon < 1:
            raise ValueError(f"execute_horizon must be >= 1 tick, got {self.execute_horizon}")
        if self.ensemble_decay < 0:
            raise ValueError(f"ensemble_decay must be >= 0, got {self.ensemble_decay}")


class ActionQueue:
    """Chunks indexed by the tick of their first action."""

    def __init__(self, config: ChunkingConfig):
        self.config = config
        self.chunks: list[tuple[int, np.ndarray]] = []  # (start tick, actions [H, A]), oldest first

    def push(self, start_tick: int, actions: np.ndarray) -> None:
        self.chunks.append((start_tick, np.asarray(actions, np.float32)))

    def clear(self) -> None:
        self.chunks.clear()

    def action_for(self, tick: int) -> np.ndarray | None:
        """The action for `tick`, or None when no chunk covers it (the caller sends the safe action)."""
        self.chunks = [(s, a) for s, a in self.chunks if s + len(a) > tick]
        covering = [a[tick - s] for s, a in self.chunks if s <= tick]
        if not covering:
            return None
        if self.config.ensemble == "none":
            return covering[-1]
        weights = np.exp(-self.config.ensemble_decay * np.arange(len(covering)))
        return (np.tensordot(weights / weights.sum(), np.stack(covering), axes=1)).astype(np.float32)

    def remaining(self, tick: int) -> int:
        """Ticks from `tick` on that are still covered by some chunk."""
        return max((s + len(a) - tick for s, a in self.chunks), default=0)


class AsyncInference:
    """One worker thread, at most one request in flight. `submit` never blocks the control loop."""

    def __init__(self, run):
        self._run = run
        self._lock = threading.Lock()
        self._request = threading.Condition(self._lock)
        self._pending: tuple[int, dict] | None = None
        self._result: tuple[int, object, BaseException | None] | None = None
        self.busy_since_tick: int | None = None  # tick whose observation is being inferred, None when idle
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="edgevla-inference", daemon=True)
        self._thread.start()

    def submit(self, tick: int, feed: dict) -> bool:
        """Start inference on `feed` (observed at `tick`); False if one is already running."""
        with self._lock:
            if self.busy_since_tick is not None:
                return False
            self.busy_since_tick = tick
            self._pending = (tick, feed)
            self._request.notify()
            return True

    def collect(self):
        """(tick, outputs, error) of a finished inference, or None."""
        with self._lock:
            result, self._result = self._result, None
            return result

    def _work(self):
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._request.wait()
                if self._closed:
                    return
                tick, feed = self._pending
                self._pending = None
            try:
                outputs, error = self._run(feed), None
            except BaseException as e:  # reported to the loop, which sends the safe action
                outputs, error = None, e
            with self._lock:
                self._result = (tick, outputs, error)
                self.busy_since_tick = None

    def close(self, timeout_s: float = 1.0) -> None:
        with self._lock:
            self._closed = True
            self._request.notify()
        self._thread.join(timeout=timeout_s)
