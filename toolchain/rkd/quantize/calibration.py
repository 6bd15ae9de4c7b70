"""Calibration images for ONNX Runtime static quantization: a ``CalibrationDataReader`` over real images.

ONNX Runtime's calibrators (``onnxruntime.quantization.calibrate``) call ``reader.get_next()`` until it
returns None; each call returns ``{input_name: float32 batch}``. The images must be what the model takes:
float32 NCHW in [0, 1] (raw pixels; rkd models normalise inside), shaped like the model's input.
Calibrating on already-normalised images gives scales that fit nothing the model will see, so they are
refused here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from rkd.errors import UsageError

#: Slack for float rounding in the [0, 1] range check (uint8 / 255 is exact; resampled images may not be).
RANGE_TOLERANCE = 1e-6


def check_calibration_images(
    images: np.ndarray, expected_chw: Sequence[int] | None = None, *, what: str = "calibration images"
) -> np.ndarray:
    """Validate images for calibration and return them as contiguous float32 NCHW.

    Args:
        images: an array shaped (N, C, H, W), floating point, values in [0, 1].
        expected_chw: the model's (C, H, W); None skips the shape check.
        what: how the images are named in error messages.

    Raises:
        UsageError: not a non-empty 4-D floating array, a (C, H, W) that differs from the model's, non-finite
            values, or values outside [0, 1] (one line; normalisation is inside the model).
    """
    if not isinstance(images, np.ndarray):
        raise UsageError(f"{what} must be a NumPy array (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4 or len(images) == 0:
        raise UsageError(f"{what} must be a non-empty NCHW array (N, C, H, W), got shape {images.shape}")
    if images.dtype.kind != "f":
        hint = " (divide uint8 pixels by 255)" if images.dtype == np.uint8 else ""
        raise UsageError(f"{what} must be float32 in [0, 1], got dtype {images.dtype}{hint}")
    if expected_chw is not None and tuple(images.shape[1:]) != tuple(int(d) for d in expected_chw):
        c, h, w = (int(d) for d in expected_chw)
        got = tuple(images.shape[1:])
        nhwc = images.shape[-1] == c and images.shape[1] != c
        hint = " (looks like NHWC: transpose to NCHW)" if nhwc else ""
        raise UsageError(
            f"{what} have shape (C, H, W) = {got}, the model takes {(c, h, w)}{hint}; calibrate on images "
            "of the size the model was trained on"
        )
    if not np.isfinite(images).all():
        raise UsageError(f"{what} contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        raise UsageError(
            f"{what} must be raw pixels in [0, 1], found values {lo:.4g}..{hi:.4g}: normalisation is inside "
            "the model, so pass unnormalised images (uint8 / 255)"
        )
    return np.ascontiguousarray(images, dtype=np.float32)


class ImageCalibrationReader(CalibrationDataReader):
    """``onnxruntime.quantization.CalibrationDataReader`` over an in-memory batch of images.

    ``get_next()`` yields ``{input_name: images[i:i + batch_size]}`` until the images run out, then None;
    :meth:`rewind` starts over (ONNX Runtime's calibrators read once; ``qdq_loss_debug.collect_activations``
    reads again).

    Args:
        images: float32 NCHW images in [0, 1] (validated by :func:`check_calibration_images`).
        input_name: the ONNX graph's input name (an rkd bundle's is ``input``).
        batch_size: images per ``get_next()``.
        expected_chw: the model's (C, H, W); None skips the shape check.
    """

    def __init__(
        self,
        images: np.ndarray,
        input_name: str = "input",
        *,
        batch_size: int = 64,
        expected_chw: Sequence[int] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.images = check_calibration_images(images, expected_chw)
        self.input_name = input_name
        self.batch_size = batch_size
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as ``{input_name: array}``, or None when all images were read."""
        if self._pos >= len(self.images):
            return None
        batch = self.images[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        """Start again from the first image."""
        self._pos = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)
