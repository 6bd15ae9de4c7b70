"""``TensorRTRuntime``: a serialized TensorRT engine behind rkd's ``Runtime`` interface, torch owning memory.

Imported only by :func:`rkd.deploy.runtimes.open_runtime` (and tests), so ``import rkd`` never loads tensorrt.
Written to the TensorRT 10/11 Python API (every TensorRT name here is checked against the real bindings wheels
by ``tests/unit/test_tensorrt_names.py``); the calls and where they were checked:

* ``Runtime(logger).deserialize_cuda_engine(buffer)`` -> ``ICudaEngine`` or None when the plan does not fit
  this TensorRT / GPU; ``engine.create_execution_context()``: Python API Core/Runtime and Core/Engine,
  NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``.
* Name-based I/O (TensorRT >= 8.5, the only I/O API of 10/11): ``engine.num_io_tensors``,
  ``get_tensor_name(i)``, ``get_tensor_mode(name) == TensorIOMode.INPUT``, ``get_tensor_dtype(name)``,
  ``get_tensor_shape(name)`` (-1 for dynamic axes), ``get_tensor_profile_shape(name, profile_index)`` ->
  ``[min, opt, max]``: ``pyCore.cpp`` (ICudaEngine) and the 8.x -> 10.x migration guide ("Use num_io_tensors
  and get_tensor_name() ... get_tensor_mode()").
* ``context.set_input_shape(name, shape) -> bool``, ``context.get_tensor_shape(name)`` (output shape once the
  inputs are set), ``set_tensor_address(name, int) -> bool``, ``execute_async_v3(stream_handle: int) ->
  bool``: ``pyCore.cpp`` (the lambdas return the C++ ``bool`` of setInputShape / setTensorAddress /
  enqueueV3).
* No pycuda or cuda-python: buffers are torch tensors (``data_ptr()``) and the stream is torch's current CUDA
  stream (``torch.cuda.current_stream().cuda_stream``), as DEPLOY-NOTES recommends.

An engine runs only on the TensorRT version and GPU architecture it was built for, so the bundle manifest's
record of the engine (``engines[<file name>]``: ``tensorrt``, ``compute_capability``, ``sha256``) is compared
with this machine before deserialising; a mismatch, or a plan TensorRT refuses, is MissingDependencyError
(exit 3) saying to rebuild from the bundle's ONNX.

``device`` is ``"cuda"`` (or ``"cuda:N"``) in real use. ``device="cpu"`` is accepted only together with an
injected ``trt`` module, so ``tests/unit/fake_tensorrt.py`` can drive the whole control flow on a machine
without a GPU; with the real tensorrt a CPU device is refused. What the CPU path cannot exercise: the CUDA
stream handle and ``synchronize`` (``_stream_handle``/``_synchronize``), ``torch.cuda.device`` selection, and
of course TensorRT's own kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from rkd.deploy import tensorrt_build as _build
from rkd.deploy.bundle import MANIFEST_NAME, read_manifest
from rkd.deploy.runtime import Runtime
from rkd.errors import CheckpointError, MissingDependencyError, RkdError, UsageError

OUTPUT_NAME = "logits"


def _torch_dtype(trt: Any, dtype: Any, name: str, path: Path) -> torch.dtype:
    if dtype == trt.DataType.FLOAT:
        return torch.float32
    if dtype == trt.DataType.HALF:
        return torch.float16
    raise CheckpointError(
        f"engine '{path}' tensor '{name}' is {dtype}; rkd engines take and return float32/float16"
    )


def engine_record(manifest: dict[str, Any] | None, engine_name: str) -> dict[str, Any] | None:
    """The manifest's record of one engine (``manifest["engines"][engine_name]``), or None."""
    if not manifest:
        return None
    engines = manifest.get("engines")
    record = engines.get(engine_name) if isinstance(engines, dict) else None
    return record if isinstance(record, dict) else None


class TensorRTRuntime(Runtime):
    """A TensorRT engine file run with name-based I/O on torch-allocated CUDA memory.

    Args:
        engine_path: the ``.engine``/``.plan`` file.
        manifest: the bundle manifest that records the engine (``engines[<file name>]``); default: the
            ``manifest.json`` beside the engine, if there is one (read without re-hashing the bundle).
        trt: the tensorrt module (tests inject a fake); default ``import tensorrt``.
        batch_size: images per ``execute_async_v3``; default and maximum the optimization profile's max batch.
            Larger inputs are split by :meth:`Runtime.predict`; a last chunk below the profile's min batch is
            zero-padded.
        device: the CUDA device (``"cpu"`` only with an injected fake ``trt``, see the module docstring).

    Raises:
        MissingDependencyError: no CUDA GPU, no tensorrt, or an engine built for another TensorRT version
            or GPU architecture (exit 3; rebuild from the bundle's ONNX).
        UsageError / CheckpointError: a missing engine file, a file that does not match the manifest's
            sha256, an engine whose I/O is not one float image input and float logits, or a bad
            ``batch_size`` (exit 2).
        RkdError: TensorRT could not create an execution context (exit 4).
    """

    name: ClassVar[str] = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        manifest: dict[str, Any] | None = None,
        *,
        trt: Any = None,
        batch_size: int | None = None,
        device: str | torch.device = "cuda",
    ) -> None:
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise UsageError(f"TensorRT engine not found: '{self.path}'")
        self.device = torch.device(device)
        if self.device.type == "cuda":
            _build.require_cuda(f"running the TensorRT engine '{self.path}'")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        elif trt is None:
            raise UsageError(f"TensorRT engines run on a CUDA device, got device={str(device)!r}")
        self.trt = trt = _build.import_tensorrt(trt)
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        if manifest is None and (self.path.parent / MANIFEST_NAME).is_file():
            manifest = read_manifest(self.path.parent, verify=False)
        self.record = engine_record(manifest, self.path.name)
        self.gpu = _build.current_gpu(self.device.index)
        self._check_record()

        with self._on_device():
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise MissingDependencyError(
                    f"TensorRT {trt.__version__} cannot deserialise engine '{self.path}' on "
                    f"{self.gpu['gpu']} ({_build.sm_name(self.gpu['compute_capability'])}): it was built by "
                    "another TensorRT version or for another GPU architecture, or it is damaged; "
                    f"{_build.REBUILD_HINT}"
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RkdError(
                    f"TensorRT could not create an execution context for '{self.path}' (GPU memory?)"
                )
        self._bind_io()
        self.batch_size = self._check_batch(batch_size)

    # -- set-up ---------------------------------------------------------------------------------------------

    def _check_record(self) -> None:
        """Compare the manifest's record of this engine with the file and with this machine, before
        deserialising."""
        record = self.record
        if record is None:
            return
        expected = record.get("sha256")
        if expected and expected != self.sha256:
            raise CheckpointError(
                f"engine '{self.path}' does not match its manifest record (sha256 {str(expected)[:12]}..., "
                f"file {self.sha256[:12]}...): the file changed after it was built; {_build.REBUILD_HINT}"
            )
        built_trt, built_cc = record.get("tensorrt"), record.get("compute_capability")
        here_trt, here_cc = str(self.trt.__version__), self.gpu["compute_capability"]
        if (built_trt and built_trt != here_trt) or (built_cc and built_cc != here_cc):
            raise MissingDependencyError(
                f"engine '{self.path.name}' was built with TensorRT {built_trt} for "
                f"{_build.sm_name(built_cc)}{' (' + str(record['gpu']) + ')' if record.get('gpu') else ''}; "
                "this machine has TensorRT "
                f"{here_trt} / {_build.sm_name(here_cc)} ({self.gpu['gpu']}): {_build.REBUILD_HINT}"
            )

    def _bind_io(self) -> None:
        """Find the image input and the logits output by name; read dtypes and the profile's batch range."""
        trt, engine = self.trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise CheckpointError(
                f"engine '{self.path}' has inputs {inputs} and outputs {outputs}; an rkd classifier engine "
                "has one image input and a logits output"
            )
        self.input_name = inputs[0]
        self.output_names = outputs
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self._dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n), n, self.path) for n in names}
        shape = [int(d) for d in engine.get_tensor_shape(self.input_name)]
        if len(shape) != 4:
            raise CheckpointError(
                f"engine '{self.path}' input '{self.input_name}' has shape {shape}; expected NCHW"
            )
        if all(d >= 0 for d in shape):
            low = opt = high = shape
        else:
            low, opt, high = (
                [int(d) for d in s] for s in engine.get_tensor_profile_shape(self.input_name, 0)
            )
        self.profile = {"min": low, "opt": opt, "max": high}
        self.min_batch, self.max_batch = low[0], high[0]
        self.image_shape = tuple(high[1:]) if low[1:] == high[1:] else None

    def _check_batch(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.max_batch
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= self.max_batch
        ):
            raise UsageError(
                f"batch_size must be an integer from 1 to the engine profile's max batch {self.max_batch}, "
                f"got {batch_size!r}"
            )
        return batch_size

    # -- running --------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        """Make ``self.device`` the current CUDA device (TensorRT uses the current CUDA context)."""
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                yield
        else:
            yield

    def _stream_handle(self) -> int:
        """The raw handle of torch's current stream on ``self.device`` (0 for the fake's CPU path)."""
        if self.device.type == "cuda":
            return int(torch.cuda.current_stream(self.device).cuda_stream)
        return 0

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of at most ``batch_size`` images: shape set, torch buffers bound by address, one enqueue."""
        if self.image_shape is not None and tuple(x.shape[1:]) != self.image_shape:
            raise UsageError(
                f"engine '{self.path.name}' takes images shaped {self.image_shape}, got {tuple(x.shape[1:])}"
            )
        n = int(x.shape[0])
        ctx = self._context
        with self._on_device():
            x = x.to(device=self.device, dtype=self._dtypes[self.input_name]).contiguous()
            if n < self.min_batch:  # the profile cannot run fewer images: pad with zeros, drop their logits
                x = torch.cat([x, x.new_zeros((self.min_batch - n, *x.shape[1:]))])
            if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
                raise UsageError(
                    f"engine '{self.path.name}' cannot take input shape {tuple(x.shape)} (profile min "
                    f"{self.profile['min']}, max {self.profile['max']})"
                )
            outputs = {
                name: torch.empty(
                    tuple(int(d) for d in ctx.get_tensor_shape(name)),
                    dtype=self._dtypes[name],
                    device=self.device,
                )
                for name in self.output_names
            }
            for name, tensor in ((self.input_name, x), *outputs.items()):
                if not ctx.set_tensor_address(name, tensor.data_ptr()):
                    raise RkdError(f"TensorRT refused the buffer address of '{name}' for '{self.path.name}'")
            ok = ctx.execute_async_v3(self._stream_handle())
            self._synchronize()  # x and the outputs stay referenced until here
        if not ok:
            raise RkdError(f"TensorRT execution of '{self.path.name}' failed: see the TensorRT log above")
        return outputs[self.output_name][:n].float()

    def describe(self) -> dict[str, Any]:  # noqa: D102
        record = self.record or {}
        return {
            "runtime": self.name,
            "tensorrt": str(self.trt.__version__),
            "gpu": self.gpu["gpu"],
            "compute_capability": self.gpu["compute_capability"],
            "device": str(self.device),
            "file": str(self.path),
            "sha256": self.sha256,
            "precision": record.get("precision"),
            "input": self.input_name,
            "output": self.output_name,
            "profile": self.profile,
            "batch_size": self.batch_size,
        }
