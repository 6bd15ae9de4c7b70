# CPU image: rkd with ONNX Runtime; runs training, evaluation and the test suite on CPU.
# Not built on this project's machines (no Docker engine there); see docker/README.md.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/rkd
COPY pyproject.toml README.md ./
COPY toolchain ./toolchain
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19" \
 && pip install ".[dev]"
COPY recipes ./recipes
COPY export ./export
COPY benchmarks ./benchmarks
COPY tests ./tests
ENTRYPOINT ["rkd"]
CMD ["--help"]
