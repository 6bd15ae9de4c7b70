# GPU image: NVIDIA's PyTorch container (ships CUDA, cuDNN, PyTorch and TensorRT's Python package) plus rkd.
# Not built on this project's machines (no Docker engine there); see docker/README.md.
FROM nvcr.io/nvidia/pytorch:25.10-py3
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/rkd
COPY pyproject.toml README.md ./
COPY toolchain ./toolchain
# Keep the container's own torch/torchvision/tensorrt: install rkd without re-resolving them.
RUN pip install --no-deps . \
 && pip install "typer>=0.12" "rich>=13" "pydantic>=2.5" "pyyaml>=6" "safetensors>=0.4" "onnx>=1.16" \
        "onnxruntime>=1.18" "pyautoattack>=0.2.0" "pytest>=8" "pytest-timeout>=2.3" \
 && python -c "import torch, tensorrt; print(torch.__version__, tensorrt.__version__)"
COPY recipes ./recipes
COPY export ./export
COPY benchmarks ./benchmarks
COPY tests ./tests
ENTRYPOINT ["rkd"]
CMD ["--help"]
