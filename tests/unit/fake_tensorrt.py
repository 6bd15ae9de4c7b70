"""A fake ``tensorrt`` module: the TensorRT 10/11 Python API surface rkd uses, recorded, failing on demand.

No machine of the project can install TensorRT, so ``rkd.deploy.tensorrt_build`` and ``tensorrt_runtime`` are
exercised against this imitation (injected with ``trt=fake``). It follows the bindings in NVIDIA/TensorRT
``python/src/infer/pyCore.cpp`` and ``python/src/parsers/pyOnnx.cpp``: ``Logger``, ``Builder``
(``create_network(flags)``, ``create_builder_config``, ``create_optimization_profile``,
``build_serialized_network`` -> a buffer or None), ``OnnxParser`` (``parse(buffer) -> bool``, ``num_errors``,
``get_error(i)``), ``IBuilderConfig`` (``set_memory_pool_limit``, ``set_flag``/``clear_flag``,
``add_optimization_profile``, ``create_timing_cache``/``set_timing_cache``/``get_timing_cache``),
``IOptimizationProfile.set_shape`` (RuntimeError on inconsistent shapes), ``Runtime.deserialize_cuda_engine``
(None for a plan of another version), ``ICudaEngine`` name-based I/O and ``IExecutionContext``
(``set_input_shape -> bool``, ``get_tensor_shape``, ``set_tensor_address -> bool``, ``execute_async_v3 ->
bool``).

Version behaviour: ``make_fake_tensorrt("11.4.0")`` leaves out what TensorRT 11 removed (``BuilderFlag.FP16``,
``INT8``, ``BF16``, ``FP8``, ``INT4``, ``FP4``, precision-constraint flags, ``IBuilderConfig.int8_calibrator``
and the quantization-flag methods, ``platform_has_fast_fp16/int8``, the INT8 calibrator classes) and also
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (real 11 keeps it as a deprecated no-op; the fake drops it so
any use shows). Touching any of these records the name in ``fake.state.touched`` and raises AttributeError; on
10.x they exist but a touch is still recorded, so tests can assert that rkd never uses weak typing on either
version. Members added during 10.x (:data:`ADDED`) appear only from the release that added them.

Names: every public name of the fake (module attributes, enum members, methods, properties and attributes of
the classes standing in for ``Builder``, ``IBuilderConfig``, ``ICudaEngine``, ...) is a name of the real
bindings, which ``tests/unit/test_tensorrt_names.py`` checks against the name lists of the real wheels; the
fake's own bookkeeping is underscored (``_flags``, ``_inputs``, ``_plan``, ...) or in ``fake.state``.

The executing engine is real enough to catch I/O mistakes: on ``execute_async_v3`` it reads the input through
the address bound with ``set_tensor_address`` (NumPy ``__array_interface__`` for host memory, or
``__cuda_array_interface__`` when made with ``memory="cuda"``) and writes :func:`reference_logits` of it
through the output's address. What a fake cannot show: TensorRT's kernels, numerics, tactic choice, real plan
formats, and whether the real bindings accept every argument type rkd passes (the GPU tests do that where
tensorrt exists).
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

PLAN_MAGIC = b"FAKETRT-PLAN\n"
CACHE_MAGIC = b"FAKETRT-CACHE:"
WEAK_TYPING_FLAGS = (
    "FP16",
    "INT8",
    "BF16",
    "FP8",
    "INT4",
    "FP4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
)
REMOVED_CONFIG = (
    "int8_calibrator",
    "set_calibration_profile",
    "get_calibration_profile",
    "set_quantization_flag",
    "get_quantization_flag",
    "quantization_flags",
    "clear_quantization_flag",
)
REMOVED_BUILDER = ("platform_has_fast_fp16", "platform_has_fast_int8")
#: Enum members the fake has only from this 10.x release on: the first release whose bindings wheel carries
#: the name (``BuilderFlag.FP4``, ``EDITABLE_TIMING_CACHE``: 10.8; the plugin creation flags: 10.9).
ADDED: dict[str, tuple[int, int]] = {
    "FP4": (10, 8),
    "EDITABLE_TIMING_CACHE": (10, 8),
    "PREFER_AOT_PYTHON_PLUGINS": (10, 9),
    "PREFER_JIT_PYTHON_PLUGINS": (10, 9),
}
REMOVED_MODULE = (
    "IInt8Calibrator",
    "IInt8EntropyCalibrator",
    "IInt8EntropyCalibrator2",
    "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator",
    "CalibrationAlgoType",
    "QuantizationFlag",
)
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "FLOAT",
    onnx.TensorProto.FLOAT16: "HALF",
    onnx.TensorProto.INT8: "INT8",
}
_TORCH_DTYPES = {"FLOAT": (torch.float32, "<f4"), "HALF": (torch.float16, "<f2")}


def reference_logits(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """What the fake engine computes: logit ``k`` of image ``b`` is ``2 * x[b].flatten()[k] - 1``."""
    return x.flatten(1)[:, :num_classes].float() * 2 - 1


@dataclass
class FakeState:
    """What a fake recorded and how it was told to behave."""

    version: str
    parse_errors: list[str] = field(default_factory=list)
    build_fails: bool = False
    deserialize_fails: bool = False
    execute_fails: bool = False
    timing_cache_mismatch: bool = False
    memory: str = "cpu"
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    parsed_models: list[onnx.ModelProto] = field(default_factory=list)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def release(self) -> tuple[int, int]:
        """``(major, minor)``, e.g. ``(10, 9)`` for "10.9.0.34"."""
        major, minor = (self.version.split(".") + ["0"])[:2]
        return int(major), int(minor)

    def present(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """``names`` less the members this release does not have yet (:data:`ADDED`)."""
        return [n for n in names if self.release >= ADDED.get(n, (0, 0))]

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """The recorded calls of one method, in order (each a tuple starting with the method name)."""
        return [c for c in self.calls if c[0] == name]


class _Value:
    """An enum member: ``int()``-able, equal only to itself, printed like pybind11's ``BuilderFlag.TF32``."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self._enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Value) and (other._enum, other.name) == (self._enum, self.name)

    def __hash__(self) -> int:
        return hash((self._enum, self.name))

    def __repr__(self) -> str:
        return f"{self._enum}.{self.name}"


class _Watchful:
    """``_watched`` attributes exist but are recorded when read; ``_removed`` ones are recorded and raise."""

    _state: FakeState
    _label: str
    _watched: dict[str, Any]
    _removed: tuple[str, ...]

    def _init_watch(
        self, state: FakeState, label: str, watched: dict[str, Any], removed: tuple[str, ...]
    ) -> None:
        self.__dict__.update(_state=state, _label=label, _watched=watched, _removed=removed)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._watched:
            self._state.touched.append(f"{self._label}.{name}")
            return self._watched[name]
        if name in self._removed:
            self._state.touched.append(f"{self._label}.{name}")
            raise AttributeError(
                f"{self._label}.{name} was removed in TensorRT 11 (fake {self._state.version})"
            )
        raise AttributeError(f"fake tensorrt: {self._label} has no attribute {name!r}")


class _Enum(_Watchful):
    def __init__(
        self, state: FakeState, label: str, members: list[str], watched: list[str], removed: list[str]
    ):
        values = {n: _Value(label, n, i) for i, n in enumerate([*members, *watched, *removed])}
        self._init_watch(state, label, {n: values[n] for n in watched}, tuple(removed))
        for name in members:
            setattr(self, name, values[name])


class _Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (
        _Value("Severity", n, i)
        for i, n in enumerate(("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"))
    )

    def __init__(self, min_severity: _Value = WARNING) -> None:
        self.min_severity = min_severity


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str


class _Network:
    def __init__(self, flags: int) -> None:
        self._flags = flags
        self._inputs: list[_Tensor] = []
        self._outputs: list[_Tensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> _Tensor:
        return self._inputs[index]

    def get_output(self, index: int) -> _Tensor:
        return self._outputs[index]


class _ParserError:
    def __init__(self, node: int, func: str, code: str, desc: str) -> None:
        self._node, self._func, self._code, self._desc = node, func, code, desc

    def node(self) -> int:
        return self._node

    def func(self) -> str:
        return self._func

    def code(self) -> str:
        return self._code

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:  # pyOnnx.cpp parser_error_str
        return f"In node {self._node} ({self._func}): {self._code}: {self._desc}"


def _shape(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims)


class _OnnxParser:
    def __init__(self, state: FakeState, network: _Network, logger: _Logger) -> None:
        self._state, self._network = state, network
        self._errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse(self, model: Any, path: str | None = None) -> bool:
        data = bytes(memoryview(model))  # a buffer, like the real binding (py::buffer)
        self._state.calls.append(("parse", len(data), path))
        if self._state.parse_errors:
            self._errors = [
                _ParserError(i, "parseGraph", "UNSUPPORTED_NODE", msg)
                for i, msg in enumerate(self._state.parse_errors)
            ]
            return False
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:
            self._errors = [_ParserError(-1, "parse", "MODEL_DESERIALIZE_FAILED", str(exc))]
            return False
        self._state.parsed_models.append(proto)
        initializers = {init.name for init in proto.graph.initializer}
        for vi in proto.graph.input:
            if vi.name not in initializers:
                dtype = _ONNX_DTYPES.get(vi.type.tensor_type.elem_type, "OTHER")
                self._network._inputs.append(_Tensor(vi.name, _shape(vi), dtype))
        for vi in proto.graph.output:
            self._network._outputs.append(
                _Tensor(vi.name, _shape(vi), _ONNX_DTYPES.get(vi.type.tensor_type.elem_type, "OTHER"))
            )
        return True


class _Profile:
    def __init__(self, state: FakeState) -> None:
        self._state = state
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002  (binding names)
        lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
        self._state.calls.append(("set_shape", input, lo, mid, hi))
        if not (
            len(lo) == len(mid) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True))
        ):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = (lo, mid, hi)


class _TimingCache:
    def __init__(self, entries: int) -> None:
        self._entries = entries

    def serialize(self) -> memoryview:
        return memoryview(CACHE_MAGIC + str(self._entries).encode())


class _Config(_Watchful):
    def __init__(self, state: FakeState, trt: types.ModuleType) -> None:
        removed = REMOVED_CONFIG if state.major >= 11 else ()
        watched = {} if state.major >= 11 else {name: None for name in REMOVED_CONFIG}
        self._init_watch(state, "IBuilderConfig", watched, removed)
        self.__dict__.update(_trt=trt, _flags={trt.BuilderFlag.TF32}, _profiles=[], _pools={}, _cache=None)

    def set_memory_pool_limit(self, pool: _Value, pool_size: int) -> None:
        assert isinstance(pool, _Value) and pool._enum == "MemoryPoolType", pool
        self._state.calls.append(("set_memory_pool_limit", pool, int(pool_size)))
        self._pools[pool] = int(pool_size)

    def set_flag(self, flag: _Value) -> None:
        assert isinstance(flag, _Value) and flag._enum == "BuilderFlag", flag
        self._state.calls.append(("set_flag", flag))
        self._flags.add(flag)

    def clear_flag(self, flag: _Value) -> None:
        assert isinstance(flag, _Value) and flag._enum == "BuilderFlag", flag
        self._state.calls.append(("clear_flag", flag))
        self._flags.discard(flag)

    def get_flag(self, flag: _Value) -> bool:
        return flag in self._flags

    def add_optimization_profile(self, profile: _Profile) -> int:
        self._state.calls.append(("add_optimization_profile", dict(profile._shapes)))
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: Any) -> _TimingCache | None:
        blob = bytes(memoryview(serialized_timing_cache))
        self._state.calls.append(("create_timing_cache", blob))
        if not blob:
            return _TimingCache(0)
        if not blob.startswith(CACHE_MAGIC):
            return None
        return _TimingCache(int(blob[len(CACHE_MAGIC) :]))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self._state.calls.append(("set_timing_cache", cache._entries, ignore_mismatch))
        if self._state.timing_cache_mismatch and cache._entries and not ignore_mismatch:
            return False
        self.__dict__["_cache"] = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self._cache


class _Builder(_Watchful):
    def __init__(self, state: FakeState, trt: types.ModuleType, logger: _Logger) -> None:
        removed = REMOVED_BUILDER if state.major >= 11 else ()
        watched = {} if state.major >= 11 else {name: True for name in REMOVED_BUILDER}
        self._init_watch(state, "Builder", watched, removed)
        self.__dict__["_trt"] = trt
        state.calls.append(("Builder", logger.min_severity))

    def create_network(self, flags: int = 0) -> _Network:
        self._state.calls.append(("create_network", int(flags)))
        return _Network(int(flags))

    def create_builder_config(self) -> _Config:
        return _Config(self._state, self._trt)

    def create_optimization_profile(self) -> _Profile:
        return _Profile(self._state)

    def build_serialized_network(self, network: _Network, config: _Config) -> memoryview | None:
        state = self._state
        state.calls.append(("build_serialized_network",))
        profile = {}
        for profile_obj in config._profiles[:1]:
            profile = {name: [list(s) for s in shapes] for name, shapes in profile_obj._shapes.items()}
        dynamic = [t.name for t in network._inputs if any(d < 0 for d in t.shape)]
        if state.build_fails or not network._inputs or any(name not in profile for name in dynamic):
            return None  # real TensorRT logs why ("no optimization profile has been defined", ...): None
        if config._cache is not None:
            config._cache._entries += 1
        strongly_typed = state.major >= 11 or bool(network._flags & 1)
        plan = {
            "version": state.version,
            "strongly_typed": strongly_typed,
            "flags": sorted(f.name for f in config._flags),
            "io": [
                {"name": t.name, "mode": "INPUT", "shape": list(t.shape), "dtype": t.dtype}
                for t in network._inputs
            ]
            + [
                {"name": t.name, "mode": "OUTPUT", "shape": list(t.shape), "dtype": t.dtype}
                for t in network._outputs
            ],
            "profile": profile,
        }
        return memoryview(PLAN_MAGIC + json.dumps(plan).encode())


class _Runtime:
    def __init__(self, state: FakeState, trt: types.ModuleType, logger: _Logger) -> None:
        self._state, self._trt = state, trt

    def deserialize_cuda_engine(self, serialized_engine: Any) -> _Engine | None:
        data = bytes(memoryview(serialized_engine))
        self._state.calls.append(("deserialize_cuda_engine", len(data)))
        if self._state.deserialize_fails or not data.startswith(PLAN_MAGIC):
            return None
        plan = json.loads(data[len(PLAN_MAGIC) :])
        if plan["version"] != self._state.version:
            return None  # a plan only loads in the TensorRT version that built it
        return _Engine(self._state, self._trt, plan)


class _Engine:
    def __init__(self, state: FakeState, trt: types.ModuleType, plan: dict[str, Any]) -> None:
        self._state, self._trt, self._plan = state, trt, plan
        self._io = {t["name"]: t for t in plan["io"]}

    @property
    def num_io_tensors(self) -> int:
        return len(self._plan["io"])

    def get_tensor_name(self, index: int) -> str:
        return self._plan["io"][index]["name"]

    def get_tensor_mode(self, name: str) -> _Value:
        mode = self._io[name]["mode"] if name in self._io else "NONE"
        return getattr(self._trt.TensorIOMode, mode)

    def get_tensor_dtype(self, name: str) -> _Value:
        return getattr(self._trt.DataType, self._io[name]["dtype"])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._io[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if profile_index != 0 or name not in self._plan["profile"]:
            raise RuntimeError(f"fake tensorrt: no profile {profile_index} for '{name}'")
        return [tuple(s) for s in self._plan["profile"][name]]

    def create_execution_context(self) -> _Context:
        return _Context(self._state, self)


def _view(address: int, shape: tuple[int, ...], dtype: str, memory: str) -> torch.Tensor:
    """A torch tensor over raw memory at ``address`` (host via NumPy, device via __cuda_array_interface__)."""
    torch_dtype, typestr = _TORCH_DTYPES[dtype]
    iface = {"data": (int(address), False), "shape": tuple(shape), "typestr": typestr, "strides": None}
    if memory == "cuda":
        holder = types.SimpleNamespace(__cuda_array_interface__={**iface, "version": 2})
        return torch.as_tensor(holder, device="cuda")
    holder = types.SimpleNamespace(__array_interface__={**iface, "version": 3})
    return torch.from_numpy(np.asarray(holder))


class _Context:
    def __init__(self, state: FakeState, engine: _Engine) -> None:
        self._state, self._engine = state, engine
        self._input_shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        dims = tuple(int(d) for d in shape)
        self._state.calls.append(("set_input_shape", name, dims))
        lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
        if len(dims) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, dims, hi, strict=True)):
            return False
        self._input_shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self._input_shapes:
            return self._input_shapes[name]
        shape = list(self._engine.get_tensor_shape(name))
        batch = next(iter(self._input_shapes.values()), (-1,))[0]
        return tuple(batch if d < 0 else d for d in shape)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._state.calls.append(("set_tensor_address", name, int(memory)))
        if name not in self._engine._io:
            return False
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        state = self._state
        state.calls.append(("execute_async_v3", int(stream_handle)))
        io = self._engine._plan["io"]
        inputs = [t for t in io if t["mode"] == "INPUT"]
        if state.execute_fails or any(t["name"] not in self._addresses for t in io):
            return False
        if any(t["name"] not in self._input_shapes for t in inputs):
            return False
        x = _view(
            self._addresses[inputs[0]["name"]],
            self._input_shapes[inputs[0]["name"]],
            inputs[0]["dtype"],
            state.memory,
        )
        for t in io:
            if t["mode"] != "OUTPUT":
                continue
            shape = self.get_tensor_shape(t["name"])
            out = _view(self._addresses[t["name"]], shape, t["dtype"], state.memory)
            if state.memory == "cuda":
                with torch.cuda.stream(torch.cuda.ExternalStream(int(stream_handle))):
                    out.copy_(reference_logits(x, shape[-1]).to(out.dtype))
            else:
                out.copy_(reference_logits(x, shape[-1]).to(out.dtype))
        return True


def make_fake_tensorrt(
    version: str = "10.9.0.34",
    *,
    parse_errors: list[str] | None = None,
    build_fails: bool = False,
    deserialize_fails: bool = False,
    execute_fails: bool = False,
    timing_cache_mismatch: bool = False,
    memory: str = "cpu",
) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module; ``fake.state`` (:class:`FakeState`) holds records and switches."""
    state = FakeState(
        version=version,
        parse_errors=list(parse_errors or []),
        build_fails=build_fails,
        deserialize_fails=deserialize_fails,
        execute_fails=execute_fails,
        timing_cache_mismatch=timing_cache_mismatch,
        memory=memory,
    )
    v11 = state.major >= 11
    trt = types.ModuleType("tensorrt", f"fake tensorrt {version} (tests/unit/fake_tensorrt.py)")
    trt.__version__ = version
    trt.state = state
    trt.Logger = _Logger
    trt.ILogger = _Logger
    plugin_flags = state.present(["PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"])
    trt.NetworkDefinitionCreationFlag = _Enum(
        state,
        "NetworkDefinitionCreationFlag",
        ([] if v11 else ["STRONGLY_TYPED"]) + plugin_flags,
        [],
        ["STRONGLY_TYPED"] if v11 else [],
    )
    common_flags = [
        "DEBUG",
        "GPU_FALLBACK",
        "REFIT",
        "DISABLE_TIMING_CACHE",
        "TF32",
        "SPARSE_WEIGHTS",
        "VERSION_COMPATIBLE",
        "EXCLUDE_LEAN_RUNTIME",
        "STRIP_PLAN",
        "EDITABLE_TIMING_CACHE",
    ]
    common, weak = state.present(common_flags), state.present(WEAK_TYPING_FLAGS)
    trt.BuilderFlag = _Enum(state, "BuilderFlag", common, [] if v11 else weak, weak if v11 else [])
    trt.MemoryPoolType = _Enum(
        state, "MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "TACTIC_SHARED_MEMORY"], [], []
    )
    trt.TensorIOMode = _Enum(state, "TensorIOMode", ["NONE", "INPUT", "OUTPUT"], [], [])
    trt.DataType = _Enum(
        state, "DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "BF16", "INT64"], [], []
    )
    trt.Builder = lambda logger: _Builder(state, trt, logger)
    trt.Runtime = lambda logger: _Runtime(state, trt, logger)
    trt.OnnxParser = lambda network, logger: _OnnxParser(state, network, logger)

    def module_getattr(name: str) -> Any:
        if name in REMOVED_MODULE:
            state.touched.append(name)
            if v11:
                raise AttributeError(f"tensorrt.{name} was removed in TensorRT 11 (fake {version})")
            return type(name, (), {})
        raise AttributeError(f"fake tensorrt has no attribute {name!r}")

    trt.__getattr__ = module_getattr  # PEP 562
    return trt
