"""Strict YAML parsing, ``--set a.b=value`` overrides and one-line validation errors."""

from __future__ import annotations

import copy
import re
import types
import typing
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from rkd.config.schema import Recipe
from rkd.errors import RecipeError
from rkd.registry import did_you_mean


class StrictYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where it would silently guess: a key given twice in one mapping is an error
    (the safe loader keeps the last value), and ``1e-3`` is the float YAML 1.2 reads, not a string."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:  # noqa: D102
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the safe loader refuses it itself
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first at line {first + 1}); a mapping holds one value "
                    "per key: keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


StrictYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML with :class:`StrictYamlLoader` (what rkd uses for recipes, profiles and ``--set`` values)."""
    return yaml.load(text, Loader=StrictYamlLoader)  # noqa: S506 - StrictYamlLoader is a SafeLoader


_DEFAULT_METHODS = {("teacher", "method"): "pgd_at", ("student", "method"): "adv_path"}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML: ``8/255`` stays a string for the validator)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set teacher.train.epochs=1")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise RecipeError(f"--set {item!r}: empty key path")
        try:
            value = load_yaml(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item!r}: value is not valid YAML "
                              f"({getattr(exc, 'problem', None) or exc.__class__.__name__})") from None
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
                default = _DEFAULT_METHODS.get(tuple(parts[: i + 1]))
                if default is not None:  # the section the recipe left out has a default method: keep it
                    nxt["name"] = default
            if not isinstance(nxt, dict):
                raise RecipeError(f"--set {item!r}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _unwrap(tp: Any) -> list[Any]:
    """The candidate types inside Annotated/Optional/Union."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out.extend(_unwrap(arg))
        return out
    return [tp]


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> tuple[type[BaseModel] | None, list[str]]:
    """Walk ``loc`` from ``root`` (default :class:`Recipe`); return the model class there and the display path
    (tags dropped)."""
    current: list[Any] = [root or Recipe]
    shown: list[str] = []
    for part in loc:
        models = [t for c in current for t in _unwrap(c) if isinstance(t, type) and issubclass(t, BaseModel)]
        lists = [t for c in current for t in _unwrap(c) if typing.get_origin(t) is list]
        if isinstance(part, int) and lists:
            current = [typing.get_args(lists[0])[0]]
            shown.append(f"[{part}]")
            continue
        tagged = [m for m in models if "name" in m.model_fields and part in _literal_values(m)]
        if len(models) > 1 and tagged:
            current = [tagged[0]]  # discriminated-union tag: not a key the user typed
            continue
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is None:
            return (models[0] if models else None), shown
        current = [owner.model_fields[part].annotation]
        shown.append(str(part))
    models = [t for c in current for t in _unwrap(c) if isinstance(t, type) and issubclass(t, BaseModel)]
    return (models[0] if models else None), shown


def _literal_values(model: type[BaseModel]) -> tuple[Any, ...]:
    return typing.get_args(model.model_fields["name"].annotation)


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """One line for the first error: ``FILE: key.path: what is wrong (did you mean 'x'?)``; ``root`` is the
    schema the error's path starts from (default :class:`Recipe`)."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # typos first
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    more = len(errors) - 1
    suffix = f" (+{more} more error{'s' if more > 1 else ''})" if more else ""
    if err["type"] == "extra_forbidden":
        owner, shown = _model_at(loc[:-1], root)
        key = str(loc[-1])
        path = ".".join(shown + [key]) if shown else key
        hint = did_you_mean(key, list(owner.model_fields)) if owner else ""
        return f"{source}: {path}: unknown key{hint}{suffix}"
    _, shown = _model_at(loc, root)
    path = ".".join(shown) or "(top level)"
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    if err["type"] == "union_tag_not_found":
        return f"{source}: {path}.name: missing; say which method (e.g. name: pgd_at){suffix}"
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
        tag = str(ctx.get("tag", ""))
        path = f"{path}.name" if path != "(top level)" else "name"
        return f"{source}: {path}: unknown method '{tag}'{did_you_mean(tag, tags)}; choose one of: {', '.join(tags)}"
    got = err.get("input")
    got_text = (f" (got {got!r})" if err["type"] != "missing" and not isinstance(got, (dict, list))
                and "got " not in msg else "")
    return f"{source}: {path}: {msg}{got_text}{suffix}"
