"""`edgevla tune`: MetaSchedule over the model's kernels, measured on this machine or on boards through TVM RPC.

TVM 0.27 workarounds (../shared/FIELD_NOTES.md, checked again here): IR cannot be serialized in this wheel
(`ToJSONGraph` crashes), so the builder compiles candidates in this process instead of in worker processes,
the database lives in memory, and the only thing kept is the compiled library (the bundle) plus a JSON
report next to it; the default mutator set crashes when a tuning context is created, so the search uses the
LLVM schedule rules and postprocessors with MutateTileSize/MutateUnroll only; cost model: random (xgboost is
not needed). Kernels that call a linked kernels_arm C kernel are not tuned (nothing to schedule).

Measuring: locally (`LocalRunner`, for the host target) or through an RPC tracker that hands out servers by
key (`python -m tvm.exec.rpc_tracker`, and `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` on
each board): the fleet engine TVM already has. For arm64 targets the candidates are cross-compiled here and
uploaded as shared libraries, so the boards need only the TVM runtime.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT_FILE = "tuning.json"


@dataclass(frozen=True, kw_only=True)
class RpcSettings:
    tracker_host: str  # where `python -m tvm.exec.rpc_tracker` listens
    tracker_port: int
    key: str  # the device key the servers registered with (`--key`)
    session_timeout_s: float = 120.0  # per measurement session, s


@dataclass(frozen=True, kw_only=True)
class TuneSettings:
    trials: int = 400  # measured candidates over all kernels (the task scheduler shares them by weight)
    trials_per_iteration: int = 8  # candidates built and measured per round
    seed: int = 0  # search seed
    repeats_ms: float = 20.0  # each measurement repeats a kernel for at least this long, ms
    rpc: RpcSettings | None = None  # measure on boards through a tracker instead of locally


@dataclass
class TuneReport:
    tasks: int
    tuned_tasks: int
    trials: int  # the budget asked for
    measured: int  # candidates that built and were measured
    seconds: float
    measured_on: str
    skipped: list[str] = field(default_factory=list)  # tasks left as compiled (C kernel calls)

    def to_json(self) -> dict:
        return asdict(self)


def parse_tracker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--rpc-tracker must be HOST:PORT, got {text!r}")
    return host, int(port)


def _in_process_builder(cross_compiler: str | None):
    """A MetaSchedule builder that compiles in this process (worker processes would need IR serialization)."""
    import tvm
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the intrinsics the schedule rules may use)
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import local_builder
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    module = tvm.tirx.build(mod, target=item.target)  # what MetaSchedule's default build does
                    if cross_compiler:
                        path = os.path.join(tempfile.mkdtemp(prefix="edgevla-ms-"), "candidate.so")
                        module.export_library(path, fcompile=tvm.support.cc.cross_compiler(cross_compiler))
                    else:
                        path = local_builder.default_export(module)
                    results.append(ms.builder.BuilderResult(path, None))
                except Exception as e:  # a candidate that does not build is a failed trial, not a failed tune
                    results.append(ms.builder.BuilderResult(None, f"{type(e).__name__}: {e}"))
            return results

    return InProcessBuilder()


def _runner(settings: TuneSettings):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=int(settings.repeats_ms))
    if settings.rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator), "this machine"
    rpc = settings.rpc
    config = ms.runner.RPCConfig(tracker_host=rpc.tracker_host, tracker_port=rpc.tracker_port, tracker_key=rpc.key,
                                 session_timeout_sec=int(rpc.session_timeout_s))
    return (ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1),
            f"rpc {rpc.key}@{rpc.tracker_host}:{rpc.tracker_port}")


def check_tracker(rpc: RpcSettings) -> None:
    """Fail early and clearly when the tracker is unreachable or has no free server for the key."""
    from tvm import rpc as tvm_rpc

    try:
        tracker = tvm_rpc.connect_tracker(rpc.tracker_host, rpc.tracker_port)
        summary = tracker.summary()
    except Exception as e:  # connection refused, timeouts: TVM raises RuntimeError/OSError
        raise RuntimeError(f"cannot reach the RPC tracker at {rpc.tracker_host}:{rpc.tracker_port} ({e}); start it "
                           "with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port PORT`") from e
    queue = summary.get("queue_info", {})
    if rpc.key not in queue:
        raise RuntimeError(f"the tracker at {rpc.tracker_host}:{rpc.tracker_port} has no server with key {rpc.key!r} "
                           f"(it has {sorted(queue)}); start one on the board with `python -m tvm.exec.rpc_server "
                           f"--tracker {rpc.tracker_host}:{rpc.tracker_port} --key {rpc.key}`")


def _reads_integers(script: str) -> bool:
    """Whether a task's kernel takes integer tensors (token ids for a Gather, indices), read from its TVMScript
    signature: measured on random inputs such a kernel reads out of bounds and kills the process measuring it
    (an RPC server's segfault leaves TVM's runner waiting forever), and it is memory-bound, nothing a schedule
    would speed up."""
    signature = script[script.index("def "):script.index(":\n", script.index("def "))] if "def " in script else ""
    return bool(re.search(r'T\.Buffer\([^)]*\), "u?int(16|32|64)"', signature))


def tune_and_compile(mod, target_spec: dict, settings: TuneSettings, *, cross_compiler: str | None = None,
                     report_path: Path | None = None):
    """Legalize and fuse `mod`, tune every schedulable kernel, compile with the best schedules found.
    Returns the VM executable; writes the TuneReport as JSON to `report_path`."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import mutator
    from tvm.s_tir.meta_schedule.postproc import Postproc
    from tvm.s_tir.meta_schedule.schedule_rule import ScheduleRule

    if settings.trials < 1:
        raise ValueError(f"trials must be >= 1, got {settings.trials}")
    target = tvm.target.Target({**target_spec, "num-cores": 1})
    with target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(mod)
    extracted = ms.relax_integration.extract_tasks(mod, target)
    tunable, skipped = [], []
    for task in extracted:
        script = task.dispatched[0].script()
        (skipped if "T.call_extern(" in script or "T.sblock(" not in script or _reads_integers(script)
         else tunable).append(task)
    contexts = []
    for task in tunable:
        space = ms.space_generator.PostOrderApply(
            sch_rules=ScheduleRule.create("llvm"), postprocs=Postproc.create("llvm"),
            mutator_probs={mutator.MutateTileSize(): 0.9, mutator.MutateUnroll(): 0.1})
        contexts.append(ms.TuneContext(mod=task.dispatched[0], target=target, space_generator=space,
                                       search_strategy="replay-func", task_name=task.task_name, num_threads=1,
                                       rand_state=settings.seed))
    runner, measured_on = _runner(settings)
    if settings.rpc is not None:
        check_tracker(settings.rpc)
    started = time.perf_counter()
    database = ms.database.MemoryDatabase()
    if contexts:
        with tempfile.TemporaryDirectory(prefix="edgevla-tune-") as work:
            database = ms.tune.tune_tasks(
                tasks=contexts, task_weights=[float(t.weight) for t in tunable], work_dir=work,
                max_trials_global=settings.trials, num_trials_per_iter=settings.trials_per_iteration,
                builder=_in_process_builder(cross_compiler), runner=runner, database=database,
                cost_model=ms.cost_model.RandomModel(seed=settings.seed))
    with target, database:
        tuned = relax.transform.MetaScheduleApplyDatabase()(mod)
    with target:
        executable = tvm.compile(tuned, target=target)
    measured = sum(1 for r in database.get_all_tuning_records() if r.run_secs)
    report = TuneReport(tasks=len(extracted), tuned_tasks=len(contexts), trials=settings.trials, measured=measured,
                        seconds=round(time.perf_counter() - started, 1), measured_on=measured_on,
                        skipped=[t.task_name for t in skipped])
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return executable
