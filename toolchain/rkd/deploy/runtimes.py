"""``Runtime``: one interface over torch, ONNX Runtime and TensorRT, so attacks and parity checks run
unchanged against whatever ships.

``predict(x)`` takes float32 NCHW images in [0, 1] (normalisation is inside every model and file) and returns
float32 logits on ``x``'s device, without gradients; ``describe()`` says what ran (versions, device, file and
its sha256). The interface itself is :class:`rkd.deploy.runtime.Runtime` (re-exported here). Registered: ``torch``
and ``onnxruntime``; the TensorRT runtime lives in :mod:`rkd.deploy.tensorrt_runtime` (which imports only the
interface, so the two modules do not import each other) and is loaded only by :func:`open_runtime` when an engine
is opened.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from rkd.deploy.runtime import Runtime
from rkd.errors import CheckpointError, MissingDependencyError, UsageError
from rkd.registry import Registry

__all__ = ["CHECKPOINT_SUFFIXES", "ENGINE_SUFFIXES", "ONNX_SUFFIXES", "RUNTIMES", "OnnxRuntime", "Runtime",
           "TorchRuntime", "open_runtime"]

ONNX_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".safetensors",)
ENGINE_SUFFIXES = (".engine", ".plan")

_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """A torch module in eval mode under ``torch.no_grad`` (the float reference).

    Args:
        model: the classifier (normalisation inside).
        device: where to run it; default the model's current device.
        batch_size: images per forward pass.
    """

    name: ClassVar[str] = "torch"

    def __init__(
        self, model: nn.Module, device: str | torch.device | None = None, batch_size: int = 256
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"TorchRuntime needs a torch nn.Module, got {type(model).__name__}")
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = _check_batch_size(batch_size)
        self.file: Path | None = None
        self.sha256: str | None = None
        self.metadata: dict[str, Any] | None = None  # a checkpoint's sidecar metadata (training data, threat model)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 256
    ) -> TorchRuntime:
        """Load an rkd checkpoint (``rkd.models.load_checkpoint``: sha256-checked safetensors + sidecar)."""
        from rkd.models import load_checkpoint

        model, sidecar = load_checkpoint(path, map_location=device)
        runtime = cls(model, device=device, batch_size=batch_size)
        runtime.file, runtime.sha256 = Path(path), sidecar.get("sha256")
        meta = sidecar.get("metadata")
        runtime.metadata = meta if isinstance(meta, dict) else None
        return runtime

    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x.to(self.device)).float()

    def describe(self) -> dict[str, Any]:  # noqa: D102
        info: dict[str, Any] = {"runtime": self.name, "torch": torch.__version__, "device": str(self.device)}
        spec = getattr(self.model, "spec", None)
        if spec is not None and hasattr(spec, "to_dict"):
            info["model"] = spec.to_dict()
        if self.file is not None:
            info["file"], info["sha256"] = str(self.file), self.sha256
        return info


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "running ONNX files needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


#: ONNX Runtime session settings rkd uses unless told otherwise. rkd calls ONNX Runtime between torch passes (an
#: attack's surrogate gradient, the float reference): spinning intra-op threads would keep both cores busy after
#: every call and slow the torch work that follows. Measured on the quickstart bundle, 200 CIFAR-10 test images,
#: PGD-20 + AutoAttack, 2 threads: the engine's attacks took 292 s spinning, 167 s not (the float model's 109 s).
SESSION_CONFIG: dict[str, str] = {"session.intra_op.allow_spinning": "0"}


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """An ONNX file in an ``onnxruntime.InferenceSession`` (CPU by default: what CI runs).

    Inputs go through NumPy on the host; outputs come back to ``x``'s device.

    Args:
        path: the ``.onnx`` file (one input NCHW float32, first output = logits).
        providers: ONNX Runtime execution providers in priority order, full names or ``"cpu"``/``"cuda"``;
            default ``["CPUExecutionProvider"]``. A requested provider that this onnxruntime lacks, or that
            the session did not take up, is an error (exit 3), never a silent CPU fallback.
        batch_size: images per ``session.run``.
        threads: ``SessionOptions.intra_op_num_threads``; default torch's thread count (so torch and ONNX
            Runtime timings compare like with like); 0 lets ONNX Runtime choose.
        session_config: ``SessionOptions.add_session_config_entry(key, value)`` for each item, over
            :data:`SESSION_CONFIG` (idle intra-op threads sleep instead of spinning; ``{"session.intra_op.
            allow_spinning": "1"}`` restores ONNX Runtime's default).
    """

    name: ClassVar[str] = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        batch_size: int = 256,
        threads: int | None = None,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        ort = _import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"ONNX file not found: '{self.path}'")
        self.batch_size = _check_batch_size(batch_size)
        wanted = [_PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or ["cpu"])]
        available = ort.get_available_providers()
        for provider in wanted:
            if provider not in available:
                raise MissingDependencyError(
                    f"ONNX Runtime provider {provider} is not available here "
                    f"(available: {', '.join(available)}); "
                    "for CUDA install onnxruntime-gpu on a machine with a CUDA GPU, or use the CPU provider"
                )
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")  # ONNX Runtime's own fallback for nodes a GPU EP lacks
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads() if threads is None else int(threads)
        options.log_severity_level = 3
        self.session_config = {str(k): str(v) for k, v in {**SESSION_CONFIG, **(session_config or {})}.items()}
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        from rkd.deploy.onnx_files import onnx_fingerprint

        fingerprint = onnx_fingerprint(self.path)  # with external data: its files too
        self.sha256, self.external_data = fingerprint["sha256"], fingerprint["external_data"]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"ONNX Runtime cannot load '{self.path}': {first}") from None
        taken = self.session.get_providers()
        missing = [p for p in wanted if p not in taken]
        if missing:
            raise MissingDependencyError(
                f"ONNX Runtime did not enable {', '.join(missing)} for '{self.path}' "
                f"(enabled: {', '.join(taken)}); "
                "check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise CheckpointError(
                f"'{self.path}' has {len(inputs)} inputs; an rkd classifier has one (NCHW images)"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        shape = inputs[0].shape
        self.input_shape = (tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
                            if isinstance(shape, (list, tuple)) else None)
        self.providers = taken

    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(out)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "runtime": self.name, "onnxruntime": _version("onnxruntime"), "providers": list(self.providers),
            "device": "cuda" if "CUDAExecutionProvider" in self.providers else "cpu",
            "file": str(self.path), "sha256": self.sha256,
            **({"external_data": dict(self.external_data)} if self.external_data else {}),
            "input": self.input_name, "output": self.output_name,
            **({"session_config": dict(self.session_config)} if self.session_config else {}),
        }


def _open_engine(path: Path, **kw: Any) -> Runtime:
    try:
        from rkd.deploy.tensorrt_runtime import TensorRTRuntime
    except ImportError as exc:
        raise MissingDependencyError(
            f"opening '{path}' needs tensorrt ({exc}): pip install rkd[tensorrt] on a machine with NVIDIA's "
            "index, or use NVIDIA's PyTorch container"
        ) from None
    return TensorRTRuntime(path, **kw)


def open_runtime(path_or_model: str | Path | nn.Module, **kw: Any) -> Runtime:
    """The runtime for a model or a file, chosen by suffix.

    ``nn.Module`` -> ``torch``; ``.onnx`` -> ``onnxruntime``; ``.safetensors`` (rkd checkpoint) -> ``torch``;
    ``.engine``/``.plan`` -> ``tensorrt`` (``rkd.deploy.tensorrt_runtime.TensorRTRuntime(path, **kw)``,
    imported only here). ``kw`` goes to the runtime's constructor; ``device="cuda"`` for an ONNX file means
    the CUDA provider.

    Raises:
        UsageError: a missing file or an unknown suffix. MissingDependencyError: the backend is not installed.
    """
    if isinstance(path_or_model, nn.Module):
        return TorchRuntime(path_or_model, **kw)
    path = Path(path_or_model)
    suffix = path.suffix.lower()
    known = ONNX_SUFFIXES + CHECKPOINT_SUFFIXES + ENGINE_SUFFIXES
    if suffix not in known:
        raise UsageError(
            f"cannot tell which runtime runs '{path}': expected a file ending in {', '.join(known)}"
        )
    if not path.is_file():
        raise UsageError(f"model file not found: '{path}'")
    if suffix in ONNX_SUFFIXES:
        device = kw.pop("device", None)
        if device is not None and "providers" not in kw:
            kw["providers"] = ["cuda" if str(device).startswith("cuda") else "cpu"]
        return OnnxRuntime(path, **kw)
    if suffix in CHECKPOINT_SUFFIXES:
        return TorchRuntime.from_checkpoint(path, **kw)
    return _open_engine(path, **kw)
