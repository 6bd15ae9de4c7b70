"""rkd.api mirrors the command line: every option of every command is a keyword of its API function with the same
default; errors are rkd exceptions with exit codes, never SystemExit; export profiles take --set overrides."""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path

import pytest
import typer

from rkd import api
from rkd.cli.app import app
from rkd.errors import RecipeError, RkdError, UsageError

#: rkd command -> its API function (the commands without one only report on the machine or time engines).
COMMANDS = {"run": api.run, "teacher": api.teacher, "distill": api.distill, "eval": api.evaluate,
            "quantize": api.quantize, "export": api.export, "verify": api.verify}


def _api_name(param) -> str:
    longs = [o for o in param.opts if o.startswith("--")]
    name = longs[0][2:].replace("-", "_") if longs else param.name
    return api.RENAMED.get(name, name)


def _normal(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)) and not value:
        return None
    return value


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_option_is_an_api_keyword_with_the_same_default(command: str) -> None:
    click_cmd = typer.main.get_command(app).commands[command]
    signature = inspect.signature(COMMANDS[command]).parameters
    visible = [p for p in click_cmd.params if not getattr(p, "hidden", False)]
    assert visible, command
    for param in visible:
        name = _api_name(param)
        if name in api.DISPLAY_ONLY:
            continue
        assert name in signature, f"rkd {command} {param.opts[0]}: rkd.api.{COMMANDS[command].__name__} lacks {name}"
        if param.param_type_name == "argument" or param.required:
            continue
        api_default = signature[name].default
        assert _normal(param.default) == _normal(api_default), (command, name, param.default, api_default)


def test_quantize_profile_is_a_hidden_alias_of_scheme() -> None:
    params = {p.name: p for p in typer.main.get_command(app).commands["quantize"].params}
    assert params["profile"].hidden and not params["scheme"].hidden
    assert "--scheme" in params["scheme"].opts


@pytest.mark.parametrize("call", [
    lambda tmp: api.quantize(tmp / "missing.safetensors", scheme="gpu"),
    lambda tmp: api.quantize(tmp / "missing.safetensors", calib_n=0),
    lambda tmp: api.quantize(tmp / "missing.safetensors", eval_attacks="autoattack"),
    lambda tmp: api.quantize(tmp / "missing.safetensors", qat=True, qat_method="adv_path"),  # no teacher
    lambda tmp: api.quantize(tmp / "missing.safetensors", device="tpu"),
    lambda tmp: api.export(tmp / "missing.safetensors", target="tflite"),
    lambda tmp: api.evaluate(tmp / "missing.safetensors", norm="l3"),
    lambda tmp: api.evaluate(tmp / "missing.safetensors", n=0),
    lambda tmp: api.verify(tmp / "model.onnx", overrides=["verify.n=5"]),  # --set needs --profile
    lambda tmp: api.verify(tmp / "model.onnx", sample="all"),
])
def test_bad_options_raise_usage_errors_not_system_exit(call, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        call(tmp_path)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_export_profile_overrides_use_the_recipe_parser() -> None:
    from rkd.config import load_profile

    base = load_profile("x86-cpu-int8")
    changed = load_profile("x86-cpu-int8", overrides=[f"verify.n={base.verify.n + 7}", "verify.attacks=pgd5"])
    assert changed.verify.n == base.verify.n + 7 and changed.verify.attacks == "pgd5"
    assert load_profile("x86-cpu-int8").verify.n == base.verify.n  # the file is not changed
    with pytest.raises(RecipeError, match="verify.bogus|bogus"):
        load_profile("x86-cpu-int8", overrides=["verify.bogus=1"])
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        load_profile("x86-cpu-int8", overrides=["verify.n"])


def test_verify_set_reaches_the_request(tmp_path: Path) -> None:
    from rkd.verify.options import request_from_options

    keys = [k for k in inspect.signature(api.verify).parameters if k not in ("engine", "report", "junit", "log")]
    defaults = {k: inspect.signature(api.verify).parameters[k].default for k in keys}
    request = request_from_options(tmp_path / "model.onnx", **{**defaults, "profile": "x86-cpu-int8",
                                                                "overrides": ["verify.n=321"]})
    assert request.n == 321 and request.source("n") == "profile x86-cpu-int8"
    flag = request_from_options(tmp_path / "model.onnx", **{**defaults, "profile": "x86-cpu-int8", "n": 50,
                                                             "overrides": ["verify.n=321"]})
    assert flag.n == 50 and flag.source("n") == "--n"  # an option still wins over the overridden profile
    off = {**defaults, "profile": "x86-cpu-int8", "overrides": ["verify.transfer=false"]}
    assert request_from_options(tmp_path / "m.onnx", **off).transfer is False
    assert request_from_options(tmp_path / "m.onnx", **{**defaults, "profile": "x86-cpu-int8"}).transfer is True
    on = request_from_options(tmp_path / "m.onnx", **{**off, "transfer": True})  # --transfer beats the profile
    assert on.transfer is True and on.source("transfer") == "--transfer"


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "verify.n=5"], "give --profile NAME too"),
    (["--profile", "x86-cpu-int8", "--set", "verify.bogus=1"], "bogus"),
    (["--profile", "x86-cpu-int8", "--set", "verify.n"], "KEY.PATH=VALUE"),
    (["--profile", "x86-cpu-int8", "--set", "verify.allow_no_floor=true"], "not a profile's"),
])
def test_verify_set_errors_on_the_command_line(args: list[str], message: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["verify", "--engine", str(tmp_path / "model.onnx"), *args,
                                   "--report", str(tmp_path / "rep")])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "rep").exists()


def test_rkd_errors_carry_the_exit_code() -> None:
    assert issubclass(UsageError, RkdError) and UsageError.exit_code == 2


def test_import_rkd_api_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, rkd.api\n"
            "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime', 'typer', 'rich') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
