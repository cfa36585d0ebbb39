"""The `edgevla` command line. Every verb listed here works; heavy imports happen inside each verb."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(episodes=args.episodes, workdir=Path(args.workdir), progress=not args.no_progress,
             json_path=Path(args.json) if args.json else None)
    return 0


def _compile(args) -> int:
    from edgevla.targets import compile_bundle, verify_bundle

    bundle = compile_bundle(args.model, args.target, args.output, kernels=args.kernels, dense=args.dense,
                            activations=args.activations)
    print(f"wrote {bundle.path} ({bundle.target['name']}, library {bundle.manifest['library']}, dense ops: "
          f"{bundle.manifest['dense']})")
    if not args.no_verify:
        report = verify_bundle(bundle.path)
        print(report.line())
        return 0 if report.passed else 1
    return 0


def _tune(args) -> int:
    from edgevla.targets import compile_bundle, verify_bundle
    from edgevla.targets.tune import RpcSettings, TuneSettings, parse_tracker

    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise ValueError("--rpc-tracker and --rpc-key go together (the tracker hands out servers by key)")
    rpc = None
    if args.rpc_tracker:
        host, port = parse_tracker(args.rpc_tracker)
        rpc = RpcSettings(tracker_host=host, tracker_port=port, key=args.rpc_key)
    bundle = compile_bundle(args.model, args.target, args.output, kernels=args.kernels, dense=args.dense,
                            activations=args.activations, tuning=TuneSettings(trials=args.trials, rpc=rpc))
    report = bundle.manifest["tuning"]
    print(f"wrote {bundle.path} ({bundle.target['name']}): {report['tuned_tasks']} of {report['tasks']} kernels tuned, "
          f"{report['measured']} candidates measured on {report['measured_on']} in {report['seconds']:.0f} s")
    if not args.no_verify:
        result = verify_bundle(bundle.path)
        print(result.line())
        return 0 if result.passed else 1
    return 0


def _verify(args) -> int:
    from edgevla.targets import verify_bundle

    report = verify_bundle(args.bundle)
    print(report.line())
    return 0 if report.passed else 1


def _run(args) -> int:
    from edgevla.runtime.chunking import ChunkingConfig
    from edgevla.runtime.engine import load_policy
    from edgevla.runtime.loop import ControlLoop, LoopConfig
    from edgevla.runtime.robots.connect import ServoOptions, robot_from_spec

    options = ServoOptions(ids=tuple(int(i) for i in args.ids.split(",")), model=args.model, baudrate=args.baud)
    robot = robot_from_spec(args.robot, options)
    policy = load_policy(args.policy)
    chunking = ChunkingConfig(mode="async" if args.async_inference else "sync", execute_horizon=args.horizon,
                              ensemble=args.ensemble)
    config = LoopConfig(hz=args.hz, chunking=chunking, telemetry_path=args.telemetry)
    episodic = hasattr(robot, "reset")
    robot.connect()
    loop = ControlLoop(robot, policy, config=config)
    successes = 0
    try:
        if episodic:
            for episode in range(args.episodes):
                successes += bool(loop.run_episode(args.seed + episode).success)
        else:
            loop.run(ticks=args.ticks)
    finally:
        loop.close()
        robot.close()
    summary = loop.summary()
    if episodic:
        summary.update(success_rate=successes / args.episodes, episodes=args.episodes)
        print(f"success {successes}/{args.episodes}")
    print(f"{summary['ticks']} ticks at {args.hz or 'free-running'} Hz, actions {summary['action_sources']}")
    for name, s in summary["sections_ms"].items():
        print(f"  {name:12s} p50 {s['p50']:7.3f} ms  p95 {s['p95']:7.3f} ms  p99 {s['p99']:7.3f} ms  "
              f"max {s['max']:7.3f} ms")
    pe = summary["period_error_ms"]
    if pe["count"]:
        print(f"  period error p50 {pe['p50']:.3f} ms  p99 {pe['p99']:.3f} ms  max {pe['max']:.3f} ms; "
              f"overruns {summary['overruns']}")
    events = {k: v for k, v in summary["events"].items() if v}
    print(f"  events {events or 'none'}; safety clamps {summary['safety']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def _flash_config(args):
    from .flash import FlashConfig

    return FlashConfig(keep=getattr(args, "keep", 3), remote_python=args.remote_python, identity=args.identity,
                       known_hosts=args.known_hosts, accept_new_host_key=args.accept_new_host_key,
                       limit_kbps=getattr(args, "limit_kbps", None))


def _flash(args) -> int:
    from .flash import flash

    flash(args.bundle, args.dest, _flash_config(args))
    return 0


def _rollback(args) -> int:
    from .flash import rollback

    result = rollback(args.dest, _flash_config(args))
    print(f"{args.dest}: current -> {result['current']} (was {result['was']})")
    return 0


def _device_info(args) -> int:
    from .flash import device_info

    info = device_info(args.dest, _flash_config(args), bundle_path=args.bundle)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        memory = info["memory"]
        print(f"device {args.dest}\n  arch          {info['arch']}\n"
              f"  cpu features  {' '.join(info['cpu_features'][:24])}{' ...' if len(info['cpu_features']) > 24 else ''}\n"
              f"  memory        {memory['available_bytes'] / 2**20:,.0f} MiB available of {memory['total_bytes'] / 2**20:,.0f} MiB\n"
              f"  free          {info['free_bytes'] / 2**20:,.1f} MiB under {info['root']}\n"
              f"  versions      {', '.join(f'{k} {v}' for k, v in info['versions'].items() if v)}\n"
              f"  current       {info['current']}  (history: {', '.join(info['history']) or 'none'})")
        if "bundle_fits" in info:
            print(f"  bundle        {'fits' if info['bundle_fits']['fits'] else 'does NOT fit'}: {info['bundle_fits']['why']}")
    return 0 if info.get("bundle_fits", {}).get("fits", True) else 1


def _pack(args) -> int:
    from edgevla.runtime.bundle import pack_bundle_tar, read_bundle

    path = pack_bundle_tar(read_bundle(args.bundle), Path(args.output))
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


def _report(args) -> int:
    from .report import draw_report

    path, text = draw_report(args.telemetry, args.output)
    print(f"wrote {path}: {text}")
    return 0


def _load_source(source: str) -> dict:
    """`reach` (the built-in reference policy) or `MODULE:FUNCTION` returning a dict with "model",
    "example_inputs" and optionally "calibration" (an iterable of model inputs)."""
    import importlib

    if source == "reach":
        from .demo import calibration_inputs
        from .models.train_reach import load_or_train

        calibration = calibration_inputs(256, batch_size=32)
        return {"model": load_or_train(), "example_inputs": tuple(t[:1] for t in calibration[0]),
                "calibration": calibration, "input_names": ["image", "instruction", "state"],
                "output_names": ["actions"]}
    module_name, _, function_name = source.partition(":")
    if not function_name:
        raise ValueError(f"model source {source!r}: expected 'reach' or MODULE:FUNCTION (e.g. mypkg.policy:build)")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load {source!r}: {e}") from e
    spec = factory()
    if not isinstance(spec, dict) or "model" not in spec or "example_inputs" not in spec:
        raise ValueError(f"{source} must return a dict with 'model' and 'example_inputs' (and optionally "
                         f"'calibration'), got {type(spec).__name__}")
    return spec


def _export(args) -> int:
    from edgevla.exporters.compress import compress
    from edgevla.exporters.onnx_export import export

    spec = _load_source(args.source)
    model = spec["model"]
    if args.method:
        result = compress(model, args.method, calibration=spec.get("calibration"), include=args.include or None)
        model = result.model
        print(result.report.table())
    export(model, tuple(spec["example_inputs"]), args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
           input_names=spec.get("input_names"), output_names=spec.get("output_names"),
           onnxruntime_int4=args.onnxruntime_int4)
    from edgevla.exporters.inspect_onnx import inspect_file

    print(inspect_file(args.output))
    return 0


def _inspect(args) -> int:
    path = Path(args.file)
    if path.is_dir() or path.suffix == ".tar":
        from .flash import describe_bundle

        print(describe_bundle(path))
        return 0
    from edgevla.exporters.inspect_onnx import inspect_file

    print(inspect_file(args.file))
    return 0


def _bench(args) -> int:
    if args.suite == "onnx":
        from .bench.onnx_speed import run_onnx_speed

        run_onnx_speed(json_path=Path(args.json) if args.json else None)
    if args.suite == "fidelity":
        from .bench.fidelity import run_fidelity

        run_fidelity(episodes=args.episodes, calibration_samples=args.calibration, variant=args.variant,
                     json_path=Path(args.json) if args.json else None, progress=not args.no_progress)
    if args.suite == "kernels":
        from .bench.kernels import run_kernel_bench

        run_kernel_bench(json_path=Path(args.json) if args.json else None,
                         cost_table_path=Path(args.cost_table) if args.cost_table else None)
    if args.suite == "compile":
        from .bench.compile_speed import run_compile_speed

        run_compile_speed(json_path=Path(args.json) if args.json else None, tune_trials=args.tune_trials)
    if args.suite == "loop":
        from .bench.loop_timing import run_loop_bench

        run_loop_bench(seconds=args.seconds, json_path=Path(args.json) if args.json else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgevla", description="Compressed VLA policies from PyTorch to a robot.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("demo", help="train (cached), compress to 1 bit, export, compile with TVM, run the reach "
                                      "task closed loop and print success and latency per variant")
    p.add_argument("--episodes", type=int, default=50, help="held-out episodes per variant (default 50)")
    p.add_argument("--workdir", default="artifacts/demo", help="where ONNX files and the bundle go")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)

    p = verbs.add_parser("bench", help="benchmarks that print ratios measured side by side in one run")
    p.add_argument("suite", choices=["fidelity", "onnx", "loop", "compile", "kernels"],
                   help="fidelity: closed-loop success, bits/weight, bytes and layer error of every compression "
                        "method on the reach policy; onnx: 1-bit files in stock onnxruntime, generic body vs the "
                        "INT4 (MatMulNBits) path, against fp32; loop: runtime overhead per tick and 100 Hz "
                        "period error vs a plain time.sleep loop; compile: the compiled policy (TVM host, fp32 and "
                        "compressed) vs onnxruntime fp32; kernels: the C kernels vs onnxruntime fp32/int8 MatMul")
    p.add_argument("--seconds", type=float, default=10.0, help="loop: seconds per 100 Hz run (default 10)")
    p.add_argument("--episodes", type=int, default=100, help="held-out episodes per method (default 100)")
    p.add_argument("--calibration", type=int, default=512, help="calibration samples (default 512)")
    p.add_argument("--variant", choices=["reference", "large"], default="reference",
                   help="reference policy (1.3 M parameters) or the large variant (10.8 M; trained and cached "
                        "on first use with its own recipe (2400 demonstrations, 5 epochs, lr 3e-4): about an hour "
                        "on 2 cores)")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--tune-trials", type=int, default=400,
                   help="compile: MetaSchedule trials for the tuned rows (0: no tuned rows; default 400, ~4 min each)")
    p.add_argument("--cost-table", help="kernels: also write this machine's kernel cost table (JSON) for the "
                                        "budget method's latency budget (compress(..., 'budget', budget_seconds=..., "
                                        "cost_table=FILE))")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_bench)

    p = verbs.add_parser("export", help="compress (optionally) and export a PyTorch policy to ONNX with ai.edgevla ops")
    p.add_argument("source", help="'reach' (the reference policy) or MODULE:FUNCTION returning "
                                  "{'model', 'example_inputs'[, 'calibration']}")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--method", help="compression method first (sign, billm, hbvla, nm, dense_sparse, group_sparse)")
    p.add_argument("--include", action="append", help="module name pattern to compress (repeatable)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; 21 with --onnxruntime-int4)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (onnxruntime use)")
    p.add_argument("--onnxruntime-int4", action="store_true",
                   help="binary layers as INT4 + DequantizeLinear, which onnxruntime runs as MatMulNBits")
    p.set_defaults(func=_export)

    p = verbs.add_parser("inspect", help="an ONNX file: per-layer format, bits/weight, bytes, ratio vs fp32; a "
                                         "bundle (directory or .tar): its manifest")
    p.add_argument("file", help="ONNX file, bundle directory or bundle .tar")
    p.set_defaults(func=_inspect)

    p = verbs.add_parser("compile", help="compile an ONNX file for a target into a bundle directory")
    p.add_argument("model", help="ONNX file (static shapes)")
    p.add_argument("--target", default="host",
                   help="host, arm64, arm64-rpi5, arm64-orin-cpu, wasm32 or jetson-orin (default host)")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    p.add_argument("--no-verify", action="store_true", help="skip running the bundle against onnxruntime")
    p.add_argument("--kernels", choices=["auto", "c", "tir"], default="auto",
                   help="packed-format kernels: link the kernels_arm C kernels where the target has them "
                        "(auto, default), or TIR kernels only")
    p.add_argument("--dense", choices=["auto", "library", "tvm"], default="auto",
                   help="fp32 MatMul/Conv2d with constant weights: the target's dense library where it has one "
                        "(auto, default; oneDNN on x86_64 hosts), or TVM's own code")
    p.add_argument("--activations", choices=["fp32", "int8"], default="fp32",
                   help="fp32 (default): every layer exactly as the ONNX file defines it; int8: 1-bit layers "
                        "(binary, haar_binary) quantize each activation row to int8 (faster, an approximation "
                        "checked with a looser tolerance)")
    p.set_defaults(func=_compile)

    p = verbs.add_parser("tune", help="compile like `compile`, with every schedulable kernel tuned by MetaSchedule "
                                      "(measured here, or on boards through a TVM RPC tracker)")
    p.add_argument("model", help="ONNX file (static shapes)")
    p.add_argument("--target", default="host", help="host, or an arm64 target with --rpc-tracker (default host)")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write (the tuned library: TVM 0.27 "
                                                         "cannot save tuning records, so the bundle is the result)")
    p.add_argument("--trials", type=int, default=400, help="measured candidates over all kernels (default 400; "
                                                            "~4 minutes for the reach policy on 2 cores)")
    p.add_argument("--rpc-tracker", help="HOST:PORT of `python -m tvm.exec.rpc_tracker`: measure on its servers")
    p.add_argument("--rpc-key", help="device key the boards' rpc_server registered with (with --rpc-tracker)")
    p.add_argument("--no-verify", action="store_true", help="skip running the bundle against onnxruntime")
    p.add_argument("--kernels", choices=["auto", "c", "tir"], default="auto", help="as for compile")
    p.add_argument("--dense", choices=["auto", "library", "tvm"], default="auto", help="as for compile")
    p.add_argument("--activations", choices=["fp32", "int8"], default="fp32", help="as for compile")
    p.set_defaults(func=_tune)

    p = verbs.add_parser("verify", help="run a bundle on its target (as closely as this machine allows) and "
                                        "compare with its recorded onnxruntime output")
    p.add_argument("bundle")
    p.set_defaults(func=_verify)

    p = verbs.add_parser("run", help="run a bundle or .onnx policy closed loop on a robot and print timing")
    p.add_argument("policy", help="bundle directory or .onnx file")
    p.add_argument("--robot", default="sim:reach",
                   help="sim:reach | dynamixel:PORT | feetech:PORT | feetech-scs:PORT (default sim:reach)")
    p.add_argument("--hz", type=float, default=None, help="control rate in Hz (default: as fast as possible)")
    p.add_argument("--episodes", type=int, default=10, help="episodes (simulated robots)")
    p.add_argument("--ticks", type=int, default=500, help="ticks to run (servo arms; default 500)")
    p.add_argument("--seed", type=int, default=1_000_000, help="first episode seed")
    p.add_argument("--ids", default="1,2,3", help="servo IDs, one per joint (servo arms; default 1,2,3)")
    p.add_argument("--model", help="servo model (default xl430-w250 for dynamixel, sts3215 for feetech)")
    p.add_argument("--baud", type=int, default=1_000_000, help="servo bus baud rate (default 1000000)")
    p.add_argument("--async", dest="async_inference", action="store_true",
                   help="infer in a worker thread while the current chunk executes (needs --hz)")
    p.add_argument("--horizon", type=int, default=1, help="ticks between inferences (default 1)")
    p.add_argument("--ensemble", choices=["none", "exponential"], default="none",
                   help="merge overlapping chunks: newest only, or ACT temporal ensembling")
    p.add_argument("--telemetry", help="write per-tick telemetry (JSON lines, flushed every tick) to this file")
    p.add_argument("--json", help="write the summary as JSON to this file")
    p.set_defaults(func=_run)

    def ssh_options(p):
        p.add_argument("--remote-python", default="python3", help="Python with edgevla installed on the device")
        p.add_argument("--identity", help="ssh private key file")
        p.add_argument("--known-hosts", help="known_hosts file to check the device's host key against")
        p.add_argument("--accept-new-host-key", action="store_true",
                       help="trust a host key seen for the first time (a changed key is still refused)")

    p = verbs.add_parser("flash", help="deploy a bundle to DEST (a path, or ssh://user@host[:port]/path): "
                                       "verify, self-check on the device, switch atomically, keep old versions")
    p.add_argument("bundle", help="bundle directory or its .tar")
    p.add_argument("dest")
    p.add_argument("--keep", type=int, default=3, help="previous versions kept for rollback (default 3)")
    p.add_argument("--limit-kbps", type=int, help="upload bandwidth limit, kbit/s")
    ssh_options(p)
    p.set_defaults(func=_flash)

    p = verbs.add_parser("rollback", help="make the previous bundle on DEST current again")
    p.add_argument("dest")
    ssh_options(p)
    p.set_defaults(func=_rollback)

    p = verbs.add_parser("device", help="facts about a device: `edgevla device info DEST [--bundle B]`")
    p.add_argument("what", choices=["info"])
    p.add_argument("dest")
    p.add_argument("--bundle", help="also say whether this bundle fits (architecture, space)")
    p.add_argument("--json", action="store_true")
    ssh_options(p)
    p.set_defaults(func=_device_info)

    p = verbs.add_parser("pack", help="write a bundle directory as one .tar for transfer")
    p.add_argument("bundle")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_pack)

    p = verbs.add_parser("report", help="draw latency histograms and a timeline of a telemetry file to PNG")
    p.add_argument("telemetry", help="file written by edgevla run --telemetry")
    p.add_argument("-o", "--output", help="PNG to write (default: the telemetry path with .png)")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as e:  # OSError: missing files, serial ports, servo buses
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
