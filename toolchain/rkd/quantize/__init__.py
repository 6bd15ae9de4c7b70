"""INT8 quantization: calibration on real images, ONNX Runtime static QDQ quantization, the fake-quant
surrogate that gives the INT8 model gradients, and the checkpoint -> bundle pipeline (``rkd quantize``).

Modules: :mod:`rkd.quantize.calibration` (the ``CalibrationDataReader``), :mod:`rkd.quantize.ort_static`
(``quantize_onnx``, ``debug_layers``), :mod:`rkd.quantize.surrogate` (``build_surrogate``, ``save_surrogate``,
``load_surrogate``, ``agreement``; it reads graphs with :mod:`rkd.quantize.onnx_graph`, writes files with
:mod:`rkd.quantize.surrogate_files` and runs operators from :mod:`rkd.quantize.onnx_ops`,
:mod:`rkd.quantize.onnx_qops` and :mod:`rkd.quantize.onnx_common`), :mod:`rkd.quantize.qat`
(``build_qat_student``, ``train_qat``, ``write_back``: quantization-aware training of the QDQ model),
:mod:`rkd.quantize.request` (``QuantizeRequest``, ``QatOptions``: what one run does, checked once),
:mod:`rkd.quantize.measure` (float vs INT8 accuracy, the QAT step) and :mod:`rkd.quantize.pipeline`
(``run_quantize``, ``quantize_checkpoint``). Nothing is imported here, so ``import rkd.quantize`` stays light
(onnx and onnxruntime load only with the modules that use them).
"""

from __future__ import annotations

__all__: list[str] = []
