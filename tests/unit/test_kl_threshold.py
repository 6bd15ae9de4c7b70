"""The fast KL threshold search returns ONNX Runtime's thresholds on the same histograms."""

from __future__ import annotations

import numpy as np
import pytest

from rkd.quantize.kl_threshold import entropy_threshold, entropy_thresholds

calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")


def _collector(num_bins: int, num_quantized_bins: int):
    return calibrate.HistogramCollector(method="entropy", symmetric=False, num_bins=num_bins,
                                        num_quantized_bins=num_quantized_bins, percentile=99.999, scenario="same")


def _activations(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Several batches per tensor (the histogram grows when a later batch has a larger range)."""
    def batches(draw):
        return [draw(scale).astype(np.float32) for scale in (1.0, 0.5, 2.5)]
    return {
        "relu": batches(lambda s: np.maximum(rng.normal(0, s, 4000), 0)),
        "normal": batches(lambda s: rng.normal(0.3, s, 4000)),
        "heavy_tail": batches(lambda s: rng.standard_t(2, 4000) * s),
        "sparse": batches(lambda s: np.where(rng.random(4000) < 0.9, 0, rng.exponential(s, 4000))),
        "outlier": batches(lambda s: np.append(rng.normal(0, 0.1, 3999), 40 * s)),
        "two_values": batches(lambda s: rng.choice([-s, s], 4000)),
    }


@pytest.mark.parametrize(("num_bins", "num_quantized_bins"), [(512, 128), (300, 64), (2048, 128)])
def test_entropy_threshold_matches_onnxruntime(num_bins: int, num_quantized_bins: int) -> None:
    rng = np.random.default_rng(num_bins)
    collector = _collector(num_bins, num_quantized_bins)
    acts = _activations(rng)
    if num_bins == 2048:  # ONNX Runtime takes about a second per tensor at this size
        acts = {k: acts[k] for k in ("relu", "heavy_tail")}
    for batch in range(3):
        collector.collect({name: [arrs[batch]] for name, arrs in acts.items()})
    for name, h in collector.histogram_dict.items():
        theirs = collector.get_entropy_threshold(h, num_quantized_bins)
        ours = entropy_threshold(h[0], h[1], h[2], h[3], num_quantized_bins)
        assert (float(ours[0]), float(ours[1])) == (float(theirs[0]), float(theirs[1])), name
        assert ours[0].dtype == theirs[0].dtype and ours[1].dtype == theirs[1].dtype
    relu = entropy_thresholds(collector.histogram_dict, num_quantized_bins)["relu"]
    assert relu[0] == 0.0 and 0.0 < relu[1] <= float(collector.histogram_dict["relu"][3])


def test_entropy_threshold_clips_a_long_tail() -> None:
    x = np.append(np.random.default_rng(0).normal(0, 1, 20000), [60.0, -60.0]).astype(np.float32)
    collector = _collector(2048, 128)
    collector.collect({"t": [x]})
    lo, hi = entropy_thresholds(collector.histogram_dict, 128)["t"]
    assert -60.0 < lo < -2.0 and 2.0 < hi < 60.0  # the outliers are clipped, the bulk kept


def test_entropy_threshold_rejects_a_small_histogram() -> None:
    with pytest.raises(ValueError, match="too small"):
        entropy_threshold(np.ones(100, dtype=np.int64), np.linspace(-1, 1, 101, dtype=np.float32), -1, 1, 128)
