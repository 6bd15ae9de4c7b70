# CPU image: rkd with ONNX Runtime; runs training, evaluation and the test suite on CPU.
# Linted by hadolint in the test suite but not built on this project's machines (no Docker engine there); see
# docker/README.md.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/rkd
# export/ and recipes/ are built into the package (rkd/profiles, rkd/recipes) and stay here as ./export, ./recipes
COPY pyproject.toml README.md ./
COPY toolchain ./toolchain
COPY export ./export
COPY recipes ./recipes
# The CPU wheels of torch (PyTorch's CPU index: no CUDA libraries), then rkd with the versions its pyproject asks
# for (a range, not a pin: DL3013).
# hadolint ignore=DL3013
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19" \
 && pip install ".[dev]"
COPY benchmarks ./benchmarks
COPY tests ./tests
ENTRYPOINT ["rkd"]
CMD ["--help"]
