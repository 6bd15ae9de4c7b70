"""``torch.compile`` for the attack forward (``train.compile_attack``; ``auto`` measures it first:
:mod:`rkd.train.compile_choice`).

Measured on a 2-core CPU (torch 2.14): 1.2-2.9x faster PGD steps for
MobileNetV2-class models (ResNet-18 gains least); the first call compiles for tens of seconds (24-72 s cold,
3-5 s with a warm cache). Set ``TORCHINDUCTOR_CACHE_DIR`` to a writable folder that persists between runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

_lock = threading.Lock()
_compiled_call: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None


def compile_attack_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` (default mode) for use as the attacked model.

    The caller owns the returned module (it holds ``model``). Compile pays off on the attack step (1.2-2.9x on
    this CPU for MobileNetV2-class models), not on the training step (0.95-1.17x). The first call compiles for
    tens of seconds; set ``TORCHINDUCTOR_CACHE_DIR`` to reuse compiled kernels across processes.

    Args:
        model: the model, already on its device and in the mode it will be attacked in.

    Returns:
        The compiled module (``torch._dynamo.eval_frame.OptimizedModule``).
    """
    return torch.compile(model)


def _call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def compiled_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of ``model`` through one process-wide compiled function that takes the model as input.

    Dynamo treats the module's parameters as graph inputs and guards on its structure, not its identity, so
    every model of one architecture shares a graph (no recompile per model or per checkpoint), and the cache
    holds no reference to the model: it is freed as usual (a weak cache in effect). A new architecture, input
    shape or dtype recompiles, up to ``torch._dynamo.config.recompile_limit`` variants per process; beyond
    that dynamo runs the model eagerly (and says so in a warning).
    """
    global _compiled_call
    with _lock:
        if _compiled_call is None:
            _compiled_call = torch.compile(_call)
        fn = _compiled_call
    return lambda x: fn(model, x)
