"""Ahead-of-time lowering for targets without the TVM runtime (wasm32): a static plan and a C driver.

The TVM 0.27 wheel ships no runtime for WebAssembly and no sources to build one, so a whole model runs there
as the kernels TVM emits plus a driver of our own. The Relax CPU pipeline is run up to static memory
planning (`StaticPlanBlockMemory`) and global symbols, stopping before VM lowering: `main` is then a flat
list of storage allocations, tensor views into them, kernel calls (destination last), aliases, reshapes and
tuples. `plan_main` turns that into an `AotPlan` (static arenas, constants, one call per kernel), refusing
anything else with a clear error; `generate_driver` writes the C driver: static, 64-byte aligned arenas,
the constants as one embedded blob, one DLTensor per tensor view, one call per kernel through the kernel's
TVM-FFI packed entry (`__tvm_ffi_<name>`), and exported functions to reach the input and output buffers and
to run. Error messages the kernels raise (shape/dtype checks) are kept and exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALIGN = 64  # bytes; every arena, constant and input/output buffer starts on this boundary
MAX_TENSOR_ARGS = 64  # arguments of one kernel call (checked while planning)

_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}  # DLPack type codes: int, uint, float, bool


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class TensorView:
    """A DLTensor the driver passes to kernels: a typed, shaped window into one memory region."""

    region: str  # "arena", "const", "input", "scratch"
    index: int  # which arena / constant / input / scratch buffer
    offset: int  # bytes from the start of the region
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class KernelCall:
    symbol: str  # the PrimFunc's global symbol; its packed entry is __tvm_ffi_<symbol>
    args: list[Any]  # TensorView index (int) or ("int", value) for scalar arguments


@dataclass
class AotPlan:
    inputs: list[TensorView] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)  # view indices, copied out after the last call
    arenas: list[int] = field(default_factory=list)  # bytes
    scratch: list[int] = field(default_factory=list)  # bytes (buffers the plan did not place in an arena)
    constants: list[np.ndarray] = field(default_factory=list)
    views: list[TensorView] = field(default_factory=list)
    calls: list[KernelCall] = field(default_factory=list)

    def view(self, v: TensorView) -> int:
        self.views.append(v)
        return len(self.views) - 1

    def constant_offsets(self) -> list[int]:
        offsets, at = [], 0
        for c in self.constants:
            offsets.append(at)
            at = _align(at + c.nbytes)
        return offsets

    def constant_blob(self) -> bytes:
        offsets = self.constant_offsets()
        size = _align(offsets[-1] + self.constants[-1].nbytes) if self.constants else 0
        blob = bytearray(size)
        for offset, c in zip(offsets, self.constants):
            data = np.ascontiguousarray(c).tobytes()
            blob[offset:offset + len(data)] = data
        return bytes(blob)


class AotError(ValueError):
    """The model uses something the ahead-of-time driver cannot express."""


def lower_for_aot(mod, target):
    """Relax IRModule (from the ONNX import) -> the module after the CPU pipeline up to memory planning and
    global symbols (no VM lowering): what `plan_main` reads, and whose PrimFuncs are the kernels."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with target:
        passes = (cpu.library_dispatch_passes(target) + cpu.legalize_passes(target) + cpu.dataflow_lower_passes(target)
                  + [relax.transform.StaticPlanBlockMemory(), relax.transform.AttachGlobalSymbol()])
        return tvm.transform.Sequential(passes)(mod)


def kernel_module(lowered):
    """The PrimFuncs of a lowered module, as their own IRModule (to compile into one object file). A kernel
    that calls a packed function of the TVM runtime (e.g. TopK's `tvm.contrib.sort.topk`) cannot run without
    that runtime: refused, naming it."""
    import re

    import tvm

    kernels = {gv: f for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    for gv, func in kernels.items():
        packed = re.findall(r'T\.\w*call_c?packed\w*\("([^"]+)"', func.script())
        if packed:
            raise AotError(f"kernel {gv.name_hint} calls the TVM runtime function(s) {sorted(set(packed))}, which the "
                           "wasm32 driver does not have; replace that operator (e.g. TopK, sorting) in the model")
    return tvm.IRModule(kernels)


def _ints(shape_expr) -> tuple[int, ...]:
    values = []
    for v in shape_expr.values:
        if not hasattr(v, "value"):
            raise AotError(f"symbolic dimension {v} in {shape_expr}: the wasm32 driver needs static shapes")
        values.append(int(v.value))
    return tuple(values)


def _dtype(value) -> str:
    text = str(getattr(value, "value", value))
    return "bool" if text == "bool" else str(np.dtype(text))


def _constant_numpy(expr) -> np.ndarray:
    for attr in ("data", "value"):
        value = getattr(expr, attr, None)
        if hasattr(value, "numpy"):
            return value.numpy()
    raise AotError(f"constant {expr} holds no tensor")


def plan_main(lowered) -> AotPlan:
    """Read `main` of a module from `lower_for_aot` into a static plan."""
    import tvm
    from tvm import relax

    main = lowered["main"]
    plan = AotPlan()
    env: dict = {}  # relax Var -> view index, ("storage", i), or tuple of view indices
    constant_views: dict[int, int] = {}  # address of a Constant node -> view index

    for i, param in enumerate(main.params):
        si = param.ty
        view = TensorView("input", i, 0, _ints(si.shape), _dtype(si.dtype))
        plan.inputs.append(view)
        env[param] = plan.view(view)

    def value_of(expr):
        if isinstance(expr, relax.Var):
            if expr not in env:
                raise AotError(f"variable {expr.name} is used before it is defined")
            return env[expr]
        if isinstance(expr, tvm.ir.expr.Constant):
            key = expr.__chandle__()  # the node itself (Python wrappers come and go)
            if key not in constant_views:
                data = _constant_numpy(expr)
                plan.constants.append(data)
                constant_views[key] = plan.view(TensorView("const", len(plan.constants) - 1, 0, tuple(data.shape),
                                                           str(data.dtype)))
            return constant_views[key]
        if isinstance(getattr(expr, "value", None), int):  # an integer immediate (IntImm)
            return ("int", int(expr.value))
        if isinstance(expr, relax.Tuple):
            return tuple(value_of(f) for f in expr.fields)
        raise AotError(f"unsupported argument {type(expr).__name__}: {expr}")

    def bind(var, value):
        op = value.op if isinstance(value, relax.Call) else None
        name = op.name if isinstance(op, tvm.ir.Op) else None
        if isinstance(value, (relax.Var, tvm.ir.expr.Constant, relax.Tuple)):
            env[var] = value_of(value)
        elif isinstance(value, relax.TupleGetItem):
            env[var] = value_of(value.tuple_value)[value.index]
        elif name == "relax.memory.alloc_storage":
            plan.arenas.append(_align(_ints(value.args[0])[0]))
            env[var] = ("storage", len(plan.arenas) - 1)
        elif name == "relax.memory.alloc_tensor":
            storage = env[value.args[0]]
            offset = int(value.args[1].value)
            view = TensorView("arena", storage[1], offset, _ints(value.args[2]), _dtype(value.args[3]))
            if offset + view.nbytes > plan.arenas[storage[1]]:
                raise AotError(f"tensor of {view.nbytes} bytes at offset {offset} overflows its storage "
                               f"({plan.arenas[storage[1]]} bytes)")
            env[var] = plan.view(view)
        elif name == "relax.builtin.alloc_tensor":
            view = TensorView("scratch", len(plan.scratch), 0, _ints(value.args[0]), _dtype(value.args[1]))
            plan.scratch.append(_align(view.nbytes))
            env[var] = plan.view(view)
        elif name == "relax.reshape":
            source = plan.views[value_of(value.args[0])]
            shape = _ints(value.args[1]) if isinstance(value.args[1], relax.ShapeExpr) else _ints(var.ty.shape)
            reshaped = TensorView(source.region, source.index, source.offset, shape, source.dtype)
            if reshaped.nbytes != source.nbytes:
                raise AotError(f"reshape from {source.shape} to {shape} changes the size")
            env[var] = plan.view(reshaped)
        elif isinstance(op, tvm.ir.GlobalVar) and isinstance(lowered[op], tvm.tirx.PrimFunc):
            symbol = str(lowered[op].attrs["global_symbol"])
            args = [value_of(a) for a in value.args]
            if len(args) > MAX_TENSOR_ARGS:
                raise AotError(f"kernel {symbol} takes {len(args)} arguments (at most {MAX_TENSOR_ARGS})")
            plan.calls.append(KernelCall(symbol, args))
            env[var] = None  # kernels write their destination argument; the call's own value is void
        else:
            what = (name or getattr(op, "global_symbol", None) or getattr(op, "name_hint", None)
                    or type(value).__name__)
            raise AotError(f"the wasm32 driver cannot run {what!r} (binding {var.name}); the models it "
                           "runs lower to TIR kernels only (no packed runtime functions or dynamic shapes)")

    for block in main.body.blocks:
        for binding in block.bindings:
            bind(binding.var, binding.value)
    result = value_of(main.body.body)
    outputs = result if isinstance(result, tuple) else (result,)
    if any(not isinstance(o, int) for o in outputs):
        raise AotError(f"main must return tensors, got {outputs}")
    plan.outputs = list(outputs)
    return plan


# ---------------------------------------------------------------------------------------- C driver
def _c_dtype(dtype: str) -> str:
    dt = np.dtype("bool" if dtype == "bool" else dtype)
    code = _DL_CODES["b" if dt.kind == "b" else dt.kind]
    return f"{{{code}, {dt.itemsize * 8}, 1}}"


def generate_driver(plan: AotPlan, *, weights_file: str = "weights.bin", title: str = "model") -> str:
    """C source of the driver for `plan`; the constant blob (`plan.constant_blob()`) is embedded from
    `weights_file` at compile time (#embed)."""
    symbols = sorted({c.symbol for c in plan.calls})
    const_offsets = plan.constant_offsets()
    lines = [
        f"/* Generated by edgevla.targets.aot for {title}: the ahead-of-time driver of the TVM kernels in",
        " * kernels.o. Static memory only (arenas planned by TVM's StaticPlanBlockMemory), one call per kernel",
        " * through its TVM-FFI packed entry. Exports: evla_num_inputs/outputs, evla_input/output(i) (buffer",
        " * addresses), evla_input/output_bytes(i), evla_run() (0, or the failing call + 1), evla_last_error(). */",
        "#include <stddef.h>", "#include <stdint.h>", "#include <stdlib.h>", "#include <string.h>",
        "#include <tvm/ffi/c_api.h>", "",
        '#define EXPORT(name) __attribute__((export_name(name)))',
        f"#define ALIGNED __attribute__((aligned({ALIGN})))", "",
        "typedef int (*evla_kernel)(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);",
    ]
    lines += [f"int __tvm_ffi_{s}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);" for s in symbols]
    lines += ["", "/* ---- what the kernels need from a runtime ---- */",
              "static char last_error[512];",
              "void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {",
              "    size_t at = 0;",
              "    for (const char *p = kind; p && *p && at + 1 < sizeof last_error; p++) last_error[at++] = *p;",
              "    if (at + 2 < sizeof last_error) { last_error[at++] = ':'; last_error[at++] = ' '; }",
              "    for (int32_t i = 0; i < n; i++)",
              "        for (const char *p = parts[i]; p && *p && at + 1 < sizeof last_error; p++) last_error[at++] = *p;",
              "    last_error[at] = 0;",
              "}",
              "void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) {",
              "    const char *parts[1] = {message};",
              "    TVMFFIErrorSetRaisedFromCStrParts(kind, parts, 1);",
              "}",
              "static void *alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {",
              "    (void)device_type; (void)device_id; (void)code; (void)bits;",
              f"    return aligned_alloc({ALIGN}, (size_t)((nbytes + {ALIGN - 1}) / {ALIGN} * {ALIGN}));",
              "}",
              "static int free_workspace(int device_type, int device_id, void *ptr) {",
              "    (void)device_type; (void)device_id; free(ptr); return 0;",
              "}",
              "void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = alloc_workspace;",
              "int (*__TVMBackendFreeWorkspace)(int, int, void *) = free_workspace;", "",
              "/* ---- memory ---- */",
              "static const uint8_t weights[] ALIGNED = {" if plan.constants else "",
              f'#embed "{weights_file}"' if plan.constants else "",
              "};" if plan.constants else ""]
    for i, size in enumerate(plan.arenas):
        lines.append(f"static uint8_t arena{i}[{max(size, ALIGN)}] ALIGNED;")
    for i, size in enumerate(plan.scratch):
        lines.append(f"static uint8_t scratch{i}[{max(size, ALIGN)}] ALIGNED;")
    for i, v in enumerate(plan.inputs):
        lines.append(f"static uint8_t input{i}[{max(_align(v.nbytes), ALIGN)}] ALIGNED;")
    for i, o in enumerate(plan.outputs):
        lines.append(f"static uint8_t output{i}[{max(_align(plan.views[o].nbytes), ALIGN)}] ALIGNED;")

    def base(v: TensorView) -> str:
        if v.region == "const":
            return f"(void *)(weights + {const_offsets[v.index] + v.offset})"
        name = {"arena": "arena", "scratch": "scratch", "input": "input"}[v.region]
        return f"(void *)({name}{v.index} + {v.offset})"

    lines += ["", "/* ---- tensors ---- */"]
    for i, v in enumerate(plan.views):
        dims = ", ".join(str(d) for d in v.shape) or "0"
        lines.append(f"static int64_t shape{i}[] = {{{dims}}};")
    lines.append("static DLTensor tensors[] = {")
    for i, v in enumerate(plan.views):
        lines.append(f"    {{.data = {base(v)}, .device = {{kDLCPU, 0}}, .ndim = {len(v.shape)}, "
                     f".dtype = {_c_dtype(v.dtype)}, .shape = shape{i}, .strides = NULL, .byte_offset = 0}},")
    lines.append("};")

    lines += ["", "/* ---- the program: one entry per kernel call ---- */",
              "typedef struct { evla_kernel fn; int32_t first, count; } evla_call;",
              "/* argument i: a tensor index >= 0, or -(k + 1) for scalar k of `scalars` */"]
    arg_codes, scalars, call_rows = [], [], []
    for call in plan.calls:
        first = len(arg_codes)
        for a in call.args:
            if isinstance(a, tuple) and a[0] == "int":
                scalars.append(a[1])
                arg_codes.append(-len(scalars))
            elif isinstance(a, int):
                arg_codes.append(a)
            else:
                raise AotError(f"kernel {call.symbol}: unsupported argument {a!r}")
        call_rows.append(f"    {{__tvm_ffi_{call.symbol}, {first}, {len(call.args)}}},")
    lines.append(f"static const int32_t arg_codes[] = {{{', '.join(str(c) for c in arg_codes) or '0'}}};")
    lines.append(f"static const int64_t scalars[] = {{{', '.join(str(s) for s in scalars) or '0'}}};")
    lines.append("static const evla_call calls[] = {")
    lines += call_rows
    lines.append("};")
    in_ptrs = ", ".join(f"input{i}" for i in range(len(plan.inputs))) or "NULL"
    in_bytes = ", ".join(str(v.nbytes) for v in plan.inputs) or "0"
    out_ptrs = ", ".join(f"output{i}" for i in range(len(plan.outputs))) or "NULL"
    out_bytes = ", ".join(str(plan.views[o].nbytes) for o in plan.outputs) or "0"
    out_views = ", ".join(str(o) for o in plan.outputs) or "0"
    lines += [
        "",
        f"static uint8_t *const inputs[] = {{{in_ptrs}}};",
        f"static const uint32_t input_bytes[] = {{{in_bytes}}};",
        f"static uint8_t *const outputs[] = {{{out_ptrs}}};",
        f"static const uint32_t output_bytes[] = {{{out_bytes}}};",
        f"static const int32_t output_views[] = {{{out_views}}};",
        "",
        f'EXPORT("evla_num_inputs") int32_t evla_num_inputs(void) {{ return {len(plan.inputs)}; }}',
        f'EXPORT("evla_num_outputs") int32_t evla_num_outputs(void) {{ return {len(plan.outputs)}; }}',
        f'EXPORT("evla_input") uint8_t *evla_input(int32_t i) {{ return i >= 0 && i < {len(plan.inputs)} ? inputs[i] : NULL; }}',
        f'EXPORT("evla_input_bytes") uint32_t evla_input_bytes(int32_t i) {{ return i >= 0 && i < {len(plan.inputs)} ? input_bytes[i] : 0; }}',
        f'EXPORT("evla_output") uint8_t *evla_output(int32_t i) {{ return i >= 0 && i < {len(plan.outputs)} ? outputs[i] : NULL; }}',
        f'EXPORT("evla_output_bytes") uint32_t evla_output_bytes(int32_t i) {{ return i >= 0 && i < {len(plan.outputs)} ? output_bytes[i] : 0; }}',
        'EXPORT("evla_last_error") const char *evla_last_error(void) { return last_error; }',
        "",
        'EXPORT("evla_run") int32_t evla_run(void) {',
        f"    TVMFFIAny args[{MAX_TENSOR_ARGS}];",
        "    last_error[0] = 0;",
        "    for (int32_t c = 0; c < (int32_t)(sizeof calls / sizeof calls[0]); c++) {",
        "        for (int32_t a = 0; a < calls[c].count; a++) {",
        "            const int32_t code = arg_codes[calls[c].first + a];",
        "            memset(&args[a], 0, sizeof args[a]);",
        "            if (code >= 0) { args[a].type_index = kTVMFFIDLTensorPtr; args[a].v_ptr = &tensors[code]; }",
        "            else { args[a].type_index = kTVMFFIInt; args[a].v_int64 = scalars[-code - 1]; }",
        "        }",
        "        TVMFFIAny result;",
        "        memset(&result, 0, sizeof result);",
        "        result.type_index = kTVMFFINone;",
        "        if (calls[c].fn(NULL, args, calls[c].count, &result) != 0) return c + 1;",
        "    }",
        f"    for (int32_t i = 0; i < {len(plan.outputs)}; i++) {{",
        "        const DLTensor *t = &tensors[output_views[i]];",
        "        memcpy(outputs[i], (const uint8_t *)t->data + t->byte_offset, output_bytes[i]);",
        "    }",
        "    return 0;",
        "}",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)
