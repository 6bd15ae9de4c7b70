# GPU image: NVIDIA's PyTorch container (ships CUDA, cuDNN, PyTorch and TensorRT's Python package) plus rkd.
# Linted by hadolint in the test suite but not built on this project's machines (no Docker engine there); see
# docker/README.md.
FROM nvcr.io/nvidia/pytorch:25.10-py3
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/rkd
# export/ and recipes/ are built into the package (rkd/profiles, rkd/recipes) and stay here as ./export, ./recipes
COPY pyproject.toml README.md ./
COPY toolchain ./toolchain
COPY export ./export
COPY recipes ./recipes
# rkd with its own dependencies and test extra, as pyproject.toml lists them (a range, not a pin: DL3013). The
# container's pip constraints (/etc/pip/constraint.txt) keep its CUDA builds of torch and torchvision and its
# TensorRT. ONNX Runtime: the CUDA build replaces the CPU wheel rkd's dependencies bring (both install the module
# `onnxruntime`, so only one may be present).
# hadolint ignore=DL3013
RUN pip install ".[dev]" \
 && pip uninstall -y onnxruntime \
 && pip install "onnxruntime-gpu>=1.18" \
 && python -c "import matplotlib, onnxruntime, tensorrt, torch; \
assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers(), onnxruntime.get_available_providers(); \
print(torch.__version__, tensorrt.__version__, onnxruntime.__version__)"
COPY benchmarks ./benchmarks
COPY tests ./tests
ENTRYPOINT ["rkd"]
CMD ["--help"]
