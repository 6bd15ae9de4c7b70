"""The Python-visible names of NVIDIA's TensorRT bindings, read from the wheels without TensorRT's libraries.

``tensorrt_cu12_bindings`` / ``tensorrt_cu13_bindings`` on the package index carry only the pybind11 extension
``tensorrt_bindings/tensorrt.so`` and a small ``__init__.py``; the extension cannot be imported without
TensorRT's shared libraries, but every name it gives Python (classes, functions, properties, keyword
arguments, enum members) is a C string literal in its ``.rodata`` section. This script downloads
(``--download``) or reads the wheels of the TensorRT versions rkd claims (:data:`VERSIONS`: the first and the
newest 10.x and 11.x) and writes one name list per version to ``tests/unit/data/tensorrt_names/<version>.txt``,
which ``tests/unit/test_tensorrt_names.py`` reads (no download in CI).

What a list holds: every NUL-terminated string of ``.rodata`` that is a whole identifier, less Itanium-mangled
C++ type names (:data:`MANGLED`), plus the names ``__init__.py`` defines at module level (``__version__``,
``nptype``, ``DataType.itemsize``, ...): about 1,000 to 1,200 strings, 14 to 18 KB a version, all kept. The
linker stores a string that ends another one only once (tail merging: ``INPUT`` lives inside
``CONDITIONAL_INPUT\\0``, ``num_errors`` inside ``get_num_errors\\0`` in 10.16, ``Logger`` inside
``ILogger\\0``), so a name is in the bindings when it equals **or ends** a listed string. The lists are flat:
they say that a name exists somewhere in the bindings, not on which class (``INT8`` is a ``DataType`` member
on 11.x although ``BuilderFlag.INT8`` is gone).

Run::

    .venv/bin/python benchmarks/tensorrt_names.py --download      # fetch the wheels (pip), write the lists
    .venv/bin/python benchmarks/tensorrt_names.py --wheels DIR     # wheels already in DIR
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tests" / "unit" / "data" / "tensorrt_names"
#: Claimed TensorRT version -> the bindings package that has a cp311 Linux x86-64 wheel of it.
VERSIONS: dict[str, str] = {
    "10.0.1": "tensorrt_cu12_bindings",
    "10.16.1.11": "tensorrt_cu12_bindings",
    "11.0.0.114": "tensorrt_cu13_bindings",
    "11.4.0.106": "tensorrt_cu13_bindings",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PYTHON_VERSION = "3.11"
#: Itanium-mangled type names (RTTI strings such as ``N8nvinfer114IBuilderConfigE``), not Python names.
MANGLED = re.compile(
    r"^_Z|^St\d|St\d+vector"
    r"|\d+(?:nvinfer1|nvonnxparser|onnx2trt|tensorrt|pybind11|__gnu_cxx|_Sp_|_Lock_policy)"
)
_IDENTIFIER = re.compile(rb"(?:(?<=\x00)|^)([A-Za-z_][A-Za-z0-9_]*)(?=\x00)")
FORMAT = "rkd-tensorrt-names 1"


def elf_section(data: bytes, name: str) -> bytes:
    """The bytes of section ``name`` of a little-endian ELF64 file (section headers, ``e_shstrndx``)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off, names_size = headers[shstrndx][4], headers[shstrndx][5]
    names = data[names_off : names_off + names_size]
    for header in headers:
        start = header[0]
        if names[start : names.index(b"\x00", start)].decode() == name:
            return data[header[4] : header[4] + header[5]]
    raise ValueError(f"no {name} section")


def rodata_identifiers(extension: bytes) -> tuple[set[str], int]:
    """Whole-identifier C strings of the extension's ``.rodata`` less mangled names; how many were dropped."""
    found = {m.group(1).decode() for m in _IDENTIFIER.finditer(elf_section(extension, ".rodata"))}
    kept = {name for name in found if not MANGLED.search(name)}
    return kept, len(found) - len(kept)


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of ``body`` and, recursively, of its if/for/while/with/try blocks (not of defs)."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for _, value in ast.iter_fields(node):
                if isinstance(value, list) and value and all(isinstance(v, ast.stmt) for v in value):
                    out += _module_level(value)
                elif isinstance(value, list):  # try handlers
                    for handler in value:
                        if isinstance(handler, ast.ExceptHandler):
                            out += _module_level(handler.body)
    return out


def init_names(source: str) -> set[str]:
    """Names ``tensorrt_bindings/__init__.py`` defines at module level: defs, classes, assignment targets
    (``__version__``, ``DataType.itemsize``, ``Builder.__enter__``: the attribute's name)."""
    names: set[str] = set()
    for node in _module_level(ast.parse(source).body):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
                    elif isinstance(sub, ast.Attribute):
                        names.add(sub.attr)
    return names


def wheel_names(wheel: Path) -> tuple[list[str], dict[str, str]]:
    """The sorted name list of one bindings wheel and its header fields (wheel, sha256s, counts)."""
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
        extensions = [m for m in members if re.fullmatch(r"tensorrt_bindings/tensorrt[^/]*\.so", m)]
        if len(extensions) != 1:
            raise ValueError(f"{wheel.name}: expected one tensorrt_bindings/tensorrt*.so, found {extensions}")
        extension = zf.read(extensions[0])
        init = zf.read("tensorrt_bindings/__init__.py").decode()
    so_names, dropped = rodata_identifiers(extension)
    py_names = init_names(init)
    version = re.search(r'__version__\s*=\s*"([^"]+)"', init)
    header = {
        "version": version.group(1) if version else "?",
        "wheel": wheel.name,
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "extension": f"{extensions[0]} (sha256 {hashlib.sha256(extension).hexdigest()})",
        "names": (
            f"{len(so_names | py_names)}: {len(so_names)} .rodata identifier strings ({dropped} mangled type "
            f"names left out) and {len(py_names)} names from tensorrt_bindings/__init__.py"
        ),
        "rule": "a name exists in these bindings when it equals or ends a line below (linker tail merging)",
    }
    return sorted(so_names | py_names), header


def write_list(path: Path, names: list[str], header: dict[str, str]) -> None:
    """``# key: value`` header lines (format :data:`FORMAT`), then one name a line."""
    lines = [f"# {FORMAT}", *(f"# {key}: {value}" for key, value in header.items()), *names]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def download(package: str, version: str, dest: Path) -> Path:
    """``pip download`` the cp311 Linux x86-64 wheel of ``package==version`` into ``dest``; its path."""
    platforms = [arg for plat in PLATFORMS for arg in ("--platform", plat)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", PYTHON_VERSION, *platforms, "-d", str(dest), f"{package}=={version}"]
    subprocess.run(cmd, check=True)
    return find_wheel(package, version, dest)


def find_wheel(package: str, version: str, folder: Path) -> Path:
    """The wheel of ``package==version`` in ``folder`` (exactly one)."""
    found = sorted(folder.glob(f"{package}-{version}-*.whl"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one {package}-{version}-*.whl in {folder}, found {found}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--download", action="store_true", help="pip download the wheels into --wheels")
    parser.add_argument("--wheels", type=Path, help="folder of the wheels (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"where the lists go (default {OUT_DIR})")
    parser.add_argument("--versions", nargs="*", default=list(VERSIONS), help="subset of VERSIONS")
    args = parser.parse_args(argv)
    if args.wheels is None and not args.download:
        parser.error("give --wheels DIR (wheels already there) or --download")
    unknown = [v for v in args.versions if v not in VERSIONS]
    if unknown:
        parser.error(f"unknown versions {unknown}; known: {', '.join(VERSIONS)}")
    with tempfile.TemporaryDirectory(prefix="tensorrt-wheels-") as tmp:
        folder = args.wheels or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for version in args.versions:
            package = VERSIONS[version]
            wheel = (
                download(package, version, folder) if args.download else find_wheel(package, version, folder)
            )
            names, header = wheel_names(wheel)
            if header["version"] != version:
                raise ValueError(f"{wheel.name} says __version__ {header['version']}, expected {version}")
            path = args.out / f"{version}.txt"
            write_list(path, names, header)
            print(f"{path}: {header['names']} ({wheel.name}, sha256 {header['wheel_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
