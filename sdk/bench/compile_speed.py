"""`edgevla bench compile`: compiled bundles on the host vs the same fp32 model in onnxruntime (fp32 and int8).

One process, one thread each (TVM_NUM_THREADS=1, onnxruntime intra-op 1), medians of interleaved rounds of
BURST consecutive calls per variant (warm caches, as on a robot that runs one policy), one model and token
count at a time (every row of a table saw the same machine). Models:
- the reach policy (1.3 M parameters; batch 1, 13 tokens inside), untrained: latency does not depend on
  trained values;
- a VLA-shaped block stack (4 residual MLP blocks 768 -> 3072 -> 768, 18.9 M weights) at 1, 16, 64 and 256
  tokens, the sizes a VLA forward runs (state token, action chunk, image + text tokens);
- MobileNetV3-small and ResNet-18 shaped vision nets (their conv layer shapes, batch norm folded), 224x224.
Each model runs as: onnxruntime fp32, onnxruntime int8 (`quantize_dynamic`, the int8 peer a user would try),
the TVM fp32 bundle (default path: dense ops in the target's dense library), and TVM bundles of the
compressed model per method (C kernels, the default; with int8 activations for the 1-bit formats; TIR kernels
and MetaSchedule-tuned rows for the reach policy when asked). Speedups are onnxruntime's median over the row's, from the same run.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .timing import median_ms_interleaved


@dataclass(frozen=True, eq=False)
class Method:
    label: str
    method: str
    options: dict = field(default_factory=dict)
    int8: bool = False  # also a row compiled with int8 activations (the format has an int8-activation kernel)


REACH_METHODS = (Method("1-bit sign", "sign", {"group_size": 64}, int8=True), Method("1-bit hbvla", "hbvla", int8=True),
                 Method("2:4 nm", "nm", {"n": 2, "m": 4}))
# hbvla is left out of the stack: its policy-aware row weights take one backward pass per output entry (768 x
# tokens here) per layer, hours on this machine (the bring-your-own-policy issue's scaling item).
STACK_METHODS = (Method("1-bit sign", "sign", {"group_size": 128}, int8=True), Method("2:4 nm", "nm", {"n": 2, "m": 4}))
STACK_TOKENS = (1, 16, 64, 256)
BURST = 5  # consecutive calls per variant and round (warm caches, as on a robot running one policy)


def _block_stack(width: int = 768, hidden: int = 3072, depth: int = 4):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(width)
            self.fc1 = torch.nn.Linear(width, hidden)
            self.fc2 = torch.nn.Linear(hidden, width)

        def forward(self, x):
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))

    class BlockStack(torch.nn.Module):
        """Residual MLP blocks on token activations [1, tokens, width]: a VLA trunk's Linear layers."""

        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(*(Block() for _ in range(depth)))

        def forward(self, tokens):
            return self.blocks(tokens)

    return BlockStack().eval()


def _resnet18_shaped(classes: int = 1000):
    """ResNet-18's convolutions (7x7/2 stem, max pool, 4 stages of 2 basic blocks, 64-512 channels, 1x1
    strided shortcuts, global pool, FC), batch norm folded into the convolutions' biases (as deployment does)."""
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = nn.Conv2d(cin, cout, 3, stride, 1)
            self.b = nn.Conv2d(cout, cout, 3, 1, 1)
            self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            y = self.b(torch.relu(self.a(x)))
            return torch.relu(y + (self.short(x) if self.short is not None else x))

    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers).eval()


def _mobilenet_v3_small_shaped(classes: int = 1000):
    """MobileNetV3-small's layer shapes (16-96 channels, 3x3/5x5 depthwise inverted residuals with expansion,
    hardswish, squeeze-excite, 576 -> 1024 head), batch norm folded into the convolutions."""
    import torch
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.down, self.up = nn.Conv2d(c, max(8, c // 4), 1), nn.Conv2d(max(8, c // 4), c, 1)

        def forward(self, x):
            return x * nn.functional.hardsigmoid(self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True)))))

    class Inverted(nn.Module):
        def __init__(self, cin, k, exp, cout, se, hs, stride):
            super().__init__()
            act = nn.Hardswish() if hs else nn.ReLU()
            parts = [] if exp == cin else [nn.Conv2d(cin, exp, 1), act]
            parts += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp), act]
            parts += [SqueezeExcite(exp)] if se else []
            parts += [nn.Conv2d(exp, cout, 1)]
            self.body, self.residual = nn.Sequential(*parts), stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    spec = [(16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
            (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
            (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
            (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1)]
    layers = [nn.Conv2d(3, 16, 3, 2, 1), nn.Hardswish(), *(Inverted(*row) for row in spec),
              nn.Conv2d(96, 576, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, 1024),
              nn.Hardswish(), nn.Linear(1024, classes)]
    return nn.Sequential(*layers).eval()


VISION_METHODS = (Method("1-bit sign", "sign", {"group_size": 64}, int8=True),)


@dataclass
class Case:
    model: str
    tokens: int
    examples: Callable[[], tuple]    # the model's example input (batch 1)
    names: list[str]


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _measure_case(case: Case, torch_model, compressed: dict, tmp: Path, repeats: int, *, tir_rows: bool,
                  tuning) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgevla.exporters.onnx_export import export
    from edgevla.runtime.engine import TvmPolicy
    from edgevla.targets import compile_bundle

    stem = tmp / f"{case.model.split()[0]}_{case.tokens}"
    stem.mkdir()
    example = case.examples()
    export(torch_model, example, stem / "fp32.onnx", input_names=case.names, output_names=["out"])
    quantize_dynamic(str(stem / "fp32.onnx"), str(stem / "int8.onnx"), weight_type=QuantType.QInt8)
    fp32 = compile_bundle(stem / "fp32.onnx", "host", stem / "fp32_host")
    feed, _ = fp32.check_pair()
    runs, sizes = {}, {}
    for name, file in (("onnxruntime fp32", "fp32.onnx"), ("onnxruntime int8", "int8.onnx")):
        session = _ort_session(stem / file)
        runs[name] = lambda s=session: s.run(None, feed)
        sizes[name] = (stem / file).stat().st_size
    bundles = {"TVM fp32": fp32}
    if tuning:
        bundles["TVM fp32, tuned"] = compile_bundle(stem / "fp32.onnx", "host", stem / "fp32_tuned", tuning=tuning)
    for method, model in compressed.items():
        export(model, example, stem / f"{method.method}.onnx", input_names=case.names, output_names=["out"])
        flavours = ([("c", None, "fp32")] + ([("c", None, "int8")] if method.int8 else []) +
                    ([("c", tuning, "fp32")] if tuning else []) + ([("tir", None, "fp32")] if tir_rows else []))
        for kernels, tune_it, activations in flavours:
            name = (f"TVM {method.label} ({'C' if kernels == 'c' else 'TIR'} kernels"
                    f"{', int8 activations' if activations == 'int8' else ''}{', tuned' if tune_it else ''})")
            bundles[name] = compile_bundle(stem / f"{method.method}.onnx", "host", stem / name.replace(" ", "_"),
                                           kernels=kernels, tuning=tune_it, activations=activations)
    for name, bundle in bundles.items():
        policy = TvmPolicy(bundle)
        prepared = policy.prepare(feed)
        runs[name] = lambda p=policy, f=prepared: p.run(f)
        sizes[name] = bundle.library.stat().st_size
    for run in runs.values():  # warm up (the dense library prepacks its weights on the first call)
        run()
    times = median_ms_interleaved(runs, repeats, burst=BURST)
    return [{"model": case.model, "tokens": case.tokens, "variant": name, "median_ms": ms,
             "speedup_vs_onnxruntime_fp32": times["onnxruntime fp32"] / ms,
             "speedup_vs_onnxruntime_int8": times["onnxruntime int8"] / ms, "file_bytes": sizes[name]}
            for name, ms in times.items()]


def run_compile_speed(*, repeats: int = 50, json_path: Path | None = None, tune_trials: int = 0,
                      stack_tokens=STACK_TOKENS, stack_methods=STACK_METHODS, reach_methods=REACH_METHODS,
                      vision_methods=VISION_METHODS, tir_rows: bool = True,
                      parts=("reach", "stack", "vision")) -> list[dict]:
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import torch

    from edgevla.exporters.compress import compress
    from edgevla.models.reach_vla import ReachVLA
    from edgevla.targets.tune import TuneSettings

    torch.set_num_threads(1)
    tuning = TuneSettings(trials=tune_trials) if tune_trials > 0 else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp = Path(tmp)
        if "reach" in parts:
            torch.manual_seed(0)
            reach = ReachVLA().eval()
            reach_example = (torch.zeros(1, 64, 64, 3, dtype=torch.uint8), torch.tensor([[1, 2, 3, 5]]),
                             torch.zeros(1, 8))
            calibration = [tuple(t.repeat(8, *([1] * (t.dim() - 1))) for t in reach_example)]
            compressed = {m: compress(reach, m.method, calibration=calibration, include=["blocks.*"], **m.options).model
                          for m in reach_methods}
            case = Case("reach policy (1.3 M)", 13, lambda: reach_example, ["image", "instruction", "state"])
            rows += _print(_measure_case(case, reach, compressed, tmp, repeats, tir_rows=tir_rows, tuning=tuning))
        if "stack" in parts:
            torch.manual_seed(0)
            stack = _block_stack()
            calibration = [(torch.randn(4, 64, 768),)]
            compressed = {m: compress(stack, m.method, calibration=calibration, include=["blocks.*"],
                                      **m.options).model for m in stack_methods}
            for tokens in stack_tokens:
                case = Case("block stack (18.9 M)", tokens, lambda t=tokens: (torch.randn(1, t, 768),), ["tokens"])
                rows += _print(_measure_case(case, stack, compressed, tmp, max(10, repeats // max(1, tokens // 16)),
                                             tir_rows=False, tuning=None))
        if "vision" in parts:
            for label, make in (("MobileNetV3-small shaped (2.5 M)", _mobilenet_v3_small_shaped),
                                ("ResNet-18 shaped (11.7 M)", _resnet18_shaped)):
                torch.manual_seed(0)
                net = make()
                calibration = [(torch.randn(2, 3, 224, 224),)]
                compressed = {m: compress(net, m.method, calibration=calibration, **m.options).model
                              for m in vision_methods}
                case = Case(label, 1, lambda: (torch.randn(1, 3, 224, 224),), ["image"])
                rows += _print(_measure_case(case, net, compressed, tmp, max(10, repeats // 3), tir_rows=False,
                                             tuning=None))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))
    return rows


def _print(rows: list[dict]) -> list[dict]:
    print(format_table(rows), flush=True)
    print()
    return rows


def format_table(rows: list[dict]) -> str:
    first = rows[0]
    header = (f"{'variant':50s} {'median ms':>10s} {'vs ORT fp32':>12s} {'vs ORT int8':>12s} {'file bytes':>12s}")
    lines = [f"{first['model']}, {first['tokens']} tokens, batch 1, one thread, medians of interleaved rounds of "
             f"{BURST} calls", header,
             "-" * len(header)]
    for r in rows:
        lines.append(f"{r['variant']:50s} {r['median_ms']:10.3f} {r['speedup_vs_onnxruntime_fp32']:11.2f}x "
                     f"{r['speedup_vs_onnxruntime_int8']:11.2f}x {r['file_bytes']:12,d}")
    return "\n".join(lines)
