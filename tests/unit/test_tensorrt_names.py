"""Every TensorRT name the backend and its fake use exists in NVIDIA's real bindings of each claimed version.

The real names come from ``tests/unit/data/tensorrt_names/<version>.txt``, written by
``benchmarks/tensorrt_names.py`` from the ``tensorrt_cu12_bindings`` / ``tensorrt_cu13_bindings`` wheels (the
pybind11 extension's ``.rodata`` strings; see that script). Claimed versions (:data:`CLAIMED`): the first and
the newest release of TensorRT 10 and of TensorRT 11, the two majors ``rkd.deploy.tensorrt_build`` accepts. A
name is in a version's bindings when it equals or ends one of the listed strings (the linker's tail merging
stores ``INPUT`` inside ``CONDITIONAL_INPUT``). The lists are flat, so this checks names, not which class has
them (``DataType.INT8`` keeps ``INT8`` in 11.x although ``BuilderFlag.INT8`` is gone), nor argument types or
behaviour: the GPU tests do that where tensorrt is installed.

Backend names (:func:`collect_uses`, applied to ``tensorrt_build.py`` and ``tensorrt_runtime.py``): every
attribute read or written on a TensorRT value, every keyword argument of a call of a TensorRT callable, and
the string of ``getattr``/``hasattr`` on a TensorRT value. TensorRT values are found per function by a fixed
point:

* the module itself: the name ``trt`` (what the backend calls the imported or injected module) and any name
  bound by ``import tensorrt [as X]``; an assignment with such a name among its targets binds all its targets
  to the module (``self.trt = trt = import_tensorrt(trt)``);
* a name, ``self.<attr>`` (shared by the methods of a class), or tuple element assigned from a TensorRT value;
  a loop or comprehension variable iterating one; a parameter of a function or method of the same module that
  is called with one;
* TensorRT values: the above, attributes and subscripts of them, calls of them (``builder.create_network()``),
  dict comprehensions whose values and list/set/generator comprehensions whose elements are TensorRT values.

This over-approximates on purpose: what a TensorRT call returns counts as a TensorRT value even when it is a
plain ``str`` or ``int`` (a tensor name), so a ``str`` method on one would be reported (the backend uses none);
values reaching a function any other way (``getattr`` on ``self``, containers built from literals) are missed.

Version branches: ``if tensorrt_major(trt) >= 11:`` (any comparison of ``tensorrt_major(...)`` with an
integer, also in ``x if ... else y``) limits the names in its body to the majors it admits and those in
``else`` to the others; a body that ends in ``return``/``raise`` limits the rest of its block to the others
too (the ``network_flags`` pattern). A name read as ``hasattr(trt_value, "name")`` or ``getattr(trt_value,
"name", default)``, or an attribute inside ``if hasattr(trt_value, "name"):``, is feature-tested: it needs to
exist in one claimed version only (a misspelling still fails).

Fake names (:func:`fake_names`): ``make_fake_tensorrt(version)``'s module attributes and enum members for each
claimed version (including the members it has but records when touched), the parameter names of its
constructors, and the public methods (with their parameter names), properties, class attributes and instance
attributes of the classes that imitate TensorRT classes (:data:`FAKE_CLASSES`). The fake keeps its own
bookkeeping private (underscored) or in ``fake.state``, so every public name is a TensorRT name. What the fake
says TensorRT 11 removed must be absent from the 11.x bindings
(:func:`test_what_the_fake_says_11_removed_is_gone`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import operator
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fake_tensorrt  # noqa: E402
from fake_tensorrt import make_fake_tensorrt  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "tensorrt_names"
BACKEND = (
    REPO / "toolchain" / "rkd" / "deploy" / "tensorrt_build.py",
    REPO / "toolchain" / "rkd" / "deploy" / "tensorrt_runtime.py",
)
#: The first and the newest release of each major rkd accepts (pyproject: tensorrt>=10.0; code: 10 or 11).
CLAIMED = ("10.0.1", "10.16.1.11", "11.0.0.114", "11.4.0.106")
MODULE_ALIAS = "trt"
#: Fake class -> the TensorRT class it imitates (pybind11 enum members have ``name`` and ``value``).
FAKE_CLASSES: dict[str, str] = {
    "_Value": "BuilderFlag",
    "_Logger": "Logger",
    "_Tensor": "ITensor",
    "_Network": "INetworkDefinition",
    "_ParserError": "ParserError",
    "_OnnxParser": "OnnxParser",
    "_Profile": "IOptimizationProfile",
    "_TimingCache": "ITimingCache",
    "_Config": "IBuilderConfig",
    "_Builder": "Builder",
    "_Runtime": "Runtime",
    "_Engine": "ICudaEngine",
    "_Context": "IExecutionContext",
}
#: Fake classes that are its machinery, not TensorRT classes (enum members are checked per version instead).
FAKE_MACHINERY = frozenset({"FakeState", "_Watchful", "_Enum"})
#: Removed from ``BuilderFlag`` in 11 but still members of the real ``DataType``, so present in a flat list.
DATATYPE_MEMBERS = frozenset({"INT8", "BF16", "FP8", "INT4", "FP4"})


# -- the real name lists -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameList:
    """One version's list: header fields and the strings; ``has(name)``: equals or ends a string."""

    version: str
    header: dict[str, str]
    strings: frozenset[str]
    suffixes: frozenset[str] = field(repr=False)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def has(self, name: str) -> bool:
        return name in self.suffixes


@functools.cache
def name_list(version: str) -> NameList:
    """``tests/unit/data/tensorrt_names/<version>.txt`` (``# key: value`` header, then one string a line)."""
    header: dict[str, str] = {}
    strings: set[str] = set()
    for line in (DATA / f"{version}.txt").read_text().splitlines():
        if line.startswith("# ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            header[key] = value
        elif line and not line.startswith("#"):
            strings.add(line)
    suffixes = frozenset(s[i:] for s in strings for i in range(len(s)))
    return NameList(version, header, frozenset(strings), suffixes)


def all_lists() -> list[NameList]:
    return [name_list(v) for v in CLAIMED]


# -- the backend's names -------------------------------------------------------------------------------------

Guard = tuple[str, int]  # ("<" | "<=" | ">" | ">=" | "==" | "!=", major): holds where the name is used
_OPS: dict[type, str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}
_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Use:
    """One TensorRT name in the code: where, under which version guards, and whether feature-tested."""

    name: str
    line: int
    guards: tuple[Guard, ...] = ()
    tested: bool = False

    def applies_to(self, major: int) -> bool:
        return all(_COMPARE[op](major, n) for op, n in self.guards)


def _major_guard(test: ast.expr) -> Guard | None:
    """``tensorrt_major(x) OP n`` or ``n OP tensorrt_major(x)`` -> ``(OP, n)``; anything else None."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS):
        return None

    def is_major(node: ast.expr) -> bool:
        func = node.func if isinstance(node, ast.Call) else None
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name == "tensorrt_major"

    def as_int(node: ast.expr) -> int | None:
        ok = (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int)
            and not isinstance(node.value, bool)
        )
        return node.value if ok else None  # type: ignore[union-attr]

    op, left, right = _OPS[type(test.ops[0])], test.left, test.comparators[0]
    if is_major(left) and (n := as_int(right)) is not None:
        return op, n
    if is_major(right) and (n := as_int(left)) is not None:
        return _FLIP[op], n
    return None


def _terminates(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], ast.Return | ast.Raise)


class _Scope:
    """The TensorRT-valued local names of one function (nested functions and lambdas included)."""

    def __init__(self, node: ast.AST, cls: str | None, aliases: set[str]) -> None:
        self.node, self.cls = node, cls
        self.names: set[str] = set(aliases)


class _Collector:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.aliases = {MODULE_ALIAS}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                self.aliases |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
        self.self_attrs: dict[str, set[str]] = {}
        self.functions: dict[tuple[str | None, str], ast.FunctionDef] = {}
        self.scopes: list[_Scope] = [_Scope(tree, None, self.aliases)]
        self.by_function: dict[tuple[str | None, str], _Scope] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                self._add_function(node, None)
            elif isinstance(node, ast.ClassDef):
                self.self_attrs[node.name] = set()
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        self._add_function(item, node.name)

    def _add_function(self, node: ast.FunctionDef, cls: str | None) -> None:
        scope = _Scope(node, cls, self.aliases)
        self.scopes.append(scope)
        self.functions[(cls, node.name)] = node
        self.by_function[(cls, node.name)] = scope

    # TensorRT values ----------------------------------------------------------------------------------------

    def is_trt(self, node: ast.AST | None, scope: _Scope) -> bool:
        if isinstance(node, ast.Name):
            return node.id in scope.names
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and scope.cls is not None:
                return node.attr in self.self_attrs[scope.cls]
            return self.is_trt(node.value, scope)
        if isinstance(node, ast.Call):
            return self.is_trt(node.func, scope)
        if isinstance(node, ast.Subscript):
            return self.is_trt(node.value, scope)
        if isinstance(node, ast.DictComp):
            return self.is_trt(node.value, scope)
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp):
            return self.is_trt(node.elt, scope)
        if isinstance(node, ast.IfExp):
            return self.is_trt(node.body, scope) or self.is_trt(node.orelse, scope)
        return False

    def _bind(self, target: ast.AST, scope: _Scope, value: ast.AST | None = None) -> bool:
        """Mark ``target`` TensorRT-valued; True if new. A tuple target against a tuple ``value`` binds the
        elements whose values are TensorRT values, against anything else all its elements."""
        if isinstance(target, ast.Tuple | ast.List):
            if isinstance(value, ast.Tuple) and len(value.elts) == len(target.elts):
                pairs = zip(target.elts, value.elts, strict=True)
                return any([self._bind(t, scope) for t, v in pairs if self.is_trt(v, scope)])
            return any([self._bind(t, scope) for t in target.elts])
        if isinstance(target, ast.Starred):
            return self._bind(target.value, scope)
        if isinstance(target, ast.Name) and target.id not in scope.names:
            scope.names.add(target.id)
            return True
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
            and scope.cls is not None
            and target.attr not in self.self_attrs[scope.cls]
        ):
            self.self_attrs[scope.cls].add(target.attr)
            return True
        return False

    def _propagate(self, scope: _Scope) -> bool:
        changed = False
        for node in ast.walk(scope.node):
            if scope.node is self.tree and isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue  # module scope: top-level statements only (functions have their own scopes)
            if isinstance(node, ast.Assign):
                module = any(isinstance(t, ast.Name) and t.id in self.aliases for t in node.targets)
                for target in node.targets:
                    pairwise = isinstance(target, ast.Tuple | ast.List) and isinstance(node.value, ast.Tuple)
                    if module or pairwise or self.is_trt(node.value, scope):
                        changed |= self._bind(target, scope, None if module else node.value)
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                if self.is_trt(node.value, scope):
                    changed |= self._bind(node.target, scope)
            elif isinstance(node, ast.For | ast.comprehension):
                if self.is_trt(node.iter, scope):
                    changed |= self._bind(node.target, scope)
            elif isinstance(node, ast.withitem):
                if node.optional_vars is not None and self.is_trt(node.context_expr, scope):
                    changed |= self._bind(node.optional_vars, scope)
            elif isinstance(node, ast.Call):
                changed |= self._taint_parameters(node, scope)
        return changed

    def _taint_parameters(self, call: ast.Call, scope: _Scope) -> bool:
        """A function or method of this module called with TensorRT values gets them as parameters."""
        func = call.func
        if isinstance(func, ast.Name):
            key: tuple[str | None, str] = (None, func.id)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            key = (scope.cls, func.attr)
        else:
            return False
        if key not in self.functions:
            return False
        callee, callee_scope = self.functions[key], self.by_function[key]
        params = [a.arg for a in callee.args.posonlyargs + callee.args.args]
        if key[0] is not None:
            params = params[1:]  # self
        changed = False
        for param, arg in zip(params, call.args, strict=False):
            if self.is_trt(arg, scope) and param not in callee_scope.names:
                callee_scope.names.add(param)
                changed = True
        for kw in call.keywords:
            if kw.arg is not None and self.is_trt(kw.value, scope) and kw.arg not in callee_scope.names:
                callee_scope.names.add(kw.arg)
                changed = True
        return changed

    # uses ---------------------------------------------------------------------------------------------------

    def uses(self) -> list[Use]:
        while any([self._propagate(scope) for scope in self.scopes]):
            pass
        found: list[Use] = []
        for scope in self.scopes:
            body = list(scope.node.body)  # type: ignore[attr-defined]
            if scope.node is self.tree:
                body = [s for s in body if not isinstance(s, ast.FunctionDef | ast.ClassDef)]
            found += self._block(body, scope, (), frozenset())
        return found

    def _block(
        self, stmts: list[ast.stmt], scope: _Scope, guards: tuple[Guard, ...], tested: frozenset[str]
    ) -> list[Use]:
        found: list[Use] = []
        for stmt in stmts:
            if isinstance(stmt, ast.If):
                guard = _major_guard(stmt.test)
                found += self._expr(stmt.test, scope, guards, tested)
                if guard is not None:
                    negated = (_NEGATE[guard[0]], guard[1])
                    found += self._block(stmt.body, scope, (*guards, guard), tested)
                    found += self._block(stmt.orelse, scope, (*guards, negated), tested)
                    if _terminates(stmt.body) and not stmt.orelse:
                        guards = (*guards, negated)
                    elif _terminates(stmt.orelse) and not _terminates(stmt.body):
                        guards = (*guards, guard)
                    continue
                feature = self._feature_test(stmt.test, scope)
                found += self._block(stmt.body, scope, guards, tested | feature)
                found += self._block(stmt.orelse, scope, guards, tested)
                continue
            for _, value in ast.iter_fields(stmt):
                items = value if isinstance(value, list) else [value]
                if items and all(isinstance(i, ast.stmt) for i in items):
                    found += self._block(items, scope, guards, tested)
                    continue
                for item in items:
                    if isinstance(item, ast.AST):
                        found += self._expr(item, scope, guards, tested)
        return found

    def _feature_test(self, test: ast.expr, scope: _Scope) -> frozenset[str]:
        names = set()
        for node in ast.walk(test):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "hasattr"
                and len(node.args) == 2
                and self.is_trt(node.args[0], scope)
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                names.add(node.args[1].value)
        return frozenset(names)

    def _expr(
        self, node: ast.AST, scope: _Scope, guards: tuple[Guard, ...], tested: frozenset[str]
    ) -> list[Use]:
        if isinstance(node, ast.stmt):  # a nested def or class inside an expression-bearing field
            return self._block([node], scope, guards, tested)
        if isinstance(node, ast.IfExp) and (guard := _major_guard(node.test)) is not None:
            negated = (_NEGATE[guard[0]], guard[1])
            return [
                *self._expr(node.test, scope, guards, tested),
                *self._expr(node.body, scope, (*guards, guard), tested),
                *self._expr(node.orelse, scope, (*guards, negated), tested),
            ]
        found: list[Use] = []
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and self.is_trt(node.value, scope):
            found.append(Use(node.attr, line, guards, node.attr in tested))
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Name)
                and func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and self.is_trt(node.args[0], scope)
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                name = node.args[1].value
                feature = func.id == "hasattr" or len(node.args) == 3 or name in tested
                found.append(Use(name, line, guards, feature))
            if self.is_trt(func, scope):
                found += [Use(kw.arg, line, guards, kw.arg in tested) for kw in node.keywords if kw.arg]
        for child in ast.iter_child_nodes(node):
            found += self._expr(child, scope, guards, tested)
        return found


def collect_uses(source: str) -> list[Use]:
    """The TensorRT names ``source`` uses (see the module docstring for the rules)."""
    return _Collector(ast.parse(source)).uses()


def problems(uses: Iterable[Use], lists: list[NameList], where: str = "") -> list[str]:
    """One line per use a claimed version lacks: unguarded and missing in a version its guards admit, or
    feature-tested and missing in every version."""
    out = []
    for use in uses:
        admitted = [nl for nl in lists if use.applies_to(nl.major)]
        if use.tested:
            if not any(nl.has(use.name) for nl in lists):
                out.append(
                    f"{where}:{use.line}: {use.name} (feature-tested) is in no claimed TensorRT version"
                )
            continue
        missing = [nl.version for nl in admitted if not nl.has(use.name)]
        if missing:
            out.append(f"{where}:{use.line}: {use.name} is not in TensorRT {', '.join(missing)}")
    return out


# -- the fake's names ----------------------------------------------------------------------------------------


def _class_public_names(cls: ast.ClassDef) -> set[str]:
    """Methods and their parameter names (the real binding's keyword arguments), properties, class attributes,
    dataclass fields, ``self.x = `` and ``self.__dict__.update(x=)``."""
    names: set[str] = set()

    def targets(node: ast.AST) -> Iterator[ast.AST]:
        if isinstance(node, ast.Tuple | ast.List):
            for elt in node.elts:
                yield from targets(elt)
        else:
            yield node

    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
            args = item.args
            names.add(item.name)
            names |= {a.arg for a in args.posonlyargs + args.args[1:] + args.kwonlyargs}
        elif isinstance(item, ast.Assign):
            names |= {t.id for target in item.targets for t in targets(target) if isinstance(t, ast.Name)}
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for t in targets(target):
                    if (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        names.add(t.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "__dict__"
        ):
            names |= {kw.arg for kw in node.keywords if kw.arg}
    return {n for n in names if not n.startswith("_")}


@functools.cache
def fake_classes() -> dict[str, set[str]]:
    """Public names of each fake class (by the fake's class name), from the fake's source."""
    tree = ast.parse(Path(fake_tensorrt.__file__).read_text())
    return {node.name: _class_public_names(node) for node in tree.body if isinstance(node, ast.ClassDef)}


def fake_names(version: str) -> tuple[set[str], set[str]]:
    """``(defined, removed)``: the names ``make_fake_tensorrt(version)`` offers as TensorRT's, and those it
    leaves out as removed (touching one raises AttributeError)."""
    fake = make_fake_tensorrt(version)
    defined = {n for n in vars(fake) if not n.startswith("_") and n != "state"} | {"__version__"}
    for name in list(
        defined
    ):  # constructors: Builder(logger), OnnxParser(network, logger), Logger(min_severity)
        if callable(value := getattr(fake, name)):
            defined |= set(inspect.signature(value).parameters)
    removed: set[str] = set()
    watchers = [v for v in vars(fake).values() if isinstance(v, fake_tensorrt._Enum)]
    builder = fake.Builder(fake.Logger())
    watchers += [builder, builder.create_builder_config()]
    for obj in watchers:
        defined |= {n for n in vars(obj) if not n.startswith("_")} | set(obj._watched)
        removed |= set(obj._removed)
    (defined if fake.state.major < 11 else removed).update(fake_tensorrt.REMOVED_MODULE)
    for cls in FAKE_CLASSES:
        defined |= fake_classes()[cls]
    return defined, removed


# -- tests ---------------------------------------------------------------------------------------------------


def test_name_lists_are_the_claimed_wheels() -> None:
    assert sorted(p.stem for p in DATA.glob("*.txt")) == sorted(CLAIMED)
    for nl in all_lists():
        assert nl.header["version"] == nl.version
        assert re.fullmatch(
            rf"tensorrt_cu1[23]_bindings-{re.escape(nl.version)}-cp\d+-\S+\.whl", nl.header["wheel"]
        )
        assert re.fullmatch(r"[0-9a-f]{64}", nl.header["wheel_sha256"])
        assert len(nl.strings) > 500
        # what the real bindings are known to have, and what 11 removed
        for name in (
            "Builder",
            "build_serialized_network",
            "execute_async_v3",
            "TF32",
            "STRIP_PLAN",
            "INPUT",
        ):
            assert nl.has(name), (nl.version, name)
        assert nl.has("int8_calibrator") == (nl.major == 10)
        assert nl.has("platform_has_fast_fp16") == (nl.major == 10)
        assert nl.has("FP16") == (nl.major == 10)
        assert not nl.has("build_engine")  # removed in 10.0


def test_backend_collector_finds_the_calls() -> None:
    build = collect_uses(BACKEND[0].read_text())
    runtime = collect_uses(BACKEND[1].read_text())
    expected_build = {
        "Logger", "WARNING", "Builder", "create_network", "NetworkDefinitionCreationFlag", "STRONGLY_TYPED",
        "OnnxParser", "parse", "num_errors", "get_error", "num_inputs", "get_input", "name", "shape",
        "create_builder_config", "set_memory_pool_limit", "MemoryPoolType", "WORKSPACE", "clear_flag",
        "BuilderFlag", "TF32", "create_optimization_profile", "set_shape", "add_optimization_profile",
        "create_timing_cache", "set_timing_cache", "ignore_mismatch", "get_timing_cache", "serialize",
        "build_serialized_network", "__version__",
    }  # fmt: skip
    expected_runtime = {
        "Logger", "WARNING", "Runtime", "deserialize_cuda_engine", "create_execution_context",
        "num_io_tensors", "get_tensor_name", "get_tensor_mode", "TensorIOMode", "INPUT", "OUTPUT",
        "get_tensor_dtype", "DataType", "FLOAT", "HALF", "get_tensor_shape", "get_tensor_profile_shape",
        "set_input_shape", "set_tensor_address", "execute_async_v3", "__version__",
    }  # fmt: skip
    assert expected_build <= {u.name for u in build}, expected_build - {u.name for u in build}
    assert expected_runtime <= {u.name for u in runtime}, expected_runtime - {u.name for u in runtime}
    # torch/onnx/Path/str values are not TensorRT values
    noise = {
        "data_ptr",
        "items",
        "float",
        "read_bytes",
        "graph",
        "op_type",
        "cuda_stream",
        "to",
        "SerializeToString",
    }
    assert not noise & {u.name for u in build + runtime}
    # network_flags: the flag is read only after `if tensorrt_major(trt) >= 11: return 0`
    flag = [u for u in build if u.name == "STRONGLY_TYPED"]
    assert flag and all(u.guards == (("<", 11),) for u in flag)


@pytest.mark.parametrize("path", BACKEND, ids=lambda p: p.name)
def test_backend_names_exist_in_every_claimed_version(path: Path) -> None:
    found = problems(collect_uses(path.read_text()), all_lists(), str(path.relative_to(REPO)))
    assert found == [], "\n".join(found)


def test_fake_classes_are_classified() -> None:
    assert set(fake_classes()) == set(FAKE_CLASSES) | FAKE_MACHINERY
    for nl in all_lists():
        assert [c for c in FAKE_CLASSES.values() if not nl.has(c)] == [], nl.version


@pytest.mark.parametrize("version", CLAIMED)
def test_fake_names_exist_in_that_version(version: str) -> None:
    defined, _ = fake_names(version)
    nl = name_list(version)
    assert sorted(n for n in defined if not nl.has(n)) == []


@pytest.mark.parametrize("version", [v for v in CLAIMED if v.startswith("11.")])
def test_what_the_fake_says_11_removed_is_gone(version: str) -> None:
    """Absent from the 11.x bindings, except names a real ``DataType`` still has and ``STRONGLY_TYPED``, which
    real 11 keeps as a deprecated no-op while the fake leaves it out so that any use shows."""
    _, removed = fake_names(version)
    assert removed, "the fake removes nothing on 11.x"
    nl = name_list(version)
    still_there = sorted(n for n in removed if nl.has(n))
    assert set(still_there) <= DATATYPE_MEMBERS | {"STRONGLY_TYPED"}, still_there
    assert nl.has("STRONGLY_TYPED")


def test_fake_release_gates_follow_the_bindings() -> None:
    """Members the fake has only from a 10.x release on (``fake_tensorrt.ADDED``) are missing from 10.0.1 and
    present in the newest 10.x and in 11.x."""
    for name in fake_tensorrt.ADDED:
        assert not name_list("10.0.1").has(name), name
        assert all(name_list(v).has(name) for v in CLAIMED[1:]), name
        assert name not in fake_names("10.0.1")[0] and name in fake_names("10.16.1.11")[0]


# -- the check can fail --------------------------------------------------------------------------------------

PLANTED = """
import tensorrt as trt

def build(logger, network):
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP61)
    return builder.build_serialised_network(network, config)
"""


def test_a_misspelt_name_fails() -> None:
    found = problems(collect_uses(PLANTED), all_lists(), "planted")
    assert {line.split(": ")[1].split(" is ")[0] for line in found} == {"FP61", "build_serialised_network"}
    assert all(", ".join(CLAIMED) in line for line in found)
    fixed = PLANTED.replace("FP61", "TF32").replace("serialised", "serialized")
    assert problems(collect_uses(fixed), all_lists()) == []


def test_a_name_removed_in_11_needs_a_version_branch() -> None:
    unguarded = """
def flags(trt):
    config = trt.Builder(None).create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = None
"""
    found = problems(collect_uses(unguarded), all_lists())
    assert len(found) == 2 and all(
        line.endswith("is not in TensorRT 11.0.0.114, 11.4.0.106") for line in found
    )
    branched = """
def flags(trt):
    config = trt.Builder(None).create_builder_config()
    if tensorrt_major(trt) >= 11:
        return
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = None

def flags2(trt):
    config = trt.Builder(None).create_builder_config()
    flag = trt.BuilderFlag.FP16 if _build.tensorrt_major(trt) < 11 else trt.BuilderFlag.TF32
    if 11 > tensorrt_major(trt):
        config.set_flag(flag)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if hasattr(config, "int8_calibrator"):
        config.int8_calibrator = None
"""
    assert problems(collect_uses(branched), all_lists()) == []
    misspelt_feature = "def f(trt):\n    return hasattr(trt, 'int8_calibrater')\n"
    assert len(problems(collect_uses(misspelt_feature), all_lists())) == 1


def test_taint_follows_assignments_parameters_and_self() -> None:
    source = """
class R:
    def __init__(self, trt):
        self.trt = trt = load(trt)
        self._engine = trt.Runtime(None).deserialize_cuda_engine(b"")
        self._io(self._engine)

    def _io(self, engine):
        names = [engine.get_tensor_nam(i) for i in range(engine.num_io_tensors)]
        return {n: engine.get_tensor_mode(n) for n in names}

    def run(self, x):
        trt, ctx = self.trt, self._engine.create_execution_context()
        ok = ctx.execute_async_v2(x.data_ptr())
        return x.float(), trt.__version__, ok
"""
    found = problems(collect_uses(source), all_lists())
    assert sorted(line.split(": ")[1].split(" is ")[0] for line in found) == [
        "execute_async_v2",
        "get_tensor_nam",
    ]


def test_wheel_hashes_are_recorded_per_version() -> None:
    digests = {nl.header["wheel_sha256"] for nl in all_lists()}
    assert len(digests) == len(CLAIMED)
    assert hashlib.sha256(b"").hexdigest() not in digests
