"""Checkpoints: safetensors + sidecar round trip, every error path, atomic writes, foreign state_dicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from rkd.errors import CheckpointError, UsageError
from rkd.models import checkpoint as ckpt_module
from rkd.models import create_model, load_checkpoint, load_foreign_checkpoint, save_checkpoint
from rkd.models.classifier import Classifier

X = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny(num_classes: int = 10, name: str = "resnet18", **kw: object) -> Classifier:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, width=0.125, **kw)  # type: ignore[arg-type]
    # Non-trivial BN statistics so that buffers matter in the round trip.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Classifier, Path]:
    model = tiny()
    return model, save_checkpoint(model, tmp_path / "student.safetensors", metadata={"clean_acc": 0.5})


def test_round_trip_identical_logits(saved: tuple[Classifier, Path]) -> None:
    model, path = saved
    assert path.name == "student.safetensors" and path.is_file()
    loaded, sidecar = load_checkpoint(path)
    assert not loaded.training
    assert loaded.spec == model.spec
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    assert sidecar["format"] == "rkd-checkpoint" and sidecar["format_version"] == 1
    assert sidecar["metadata"] == {"clean_acc": 0.5}
    assert sidecar["model"]["name"] == "resnet18"


def test_sidecar_content_and_no_temp_files(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert set(sidecar) == {"format", "format_version", "model", "metadata", "sha256"}
    assert sidecar["sha256"] == ckpt_module.file_sha256(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.json", "student.safetensors"]


def test_round_trip_channels_last_and_wide_resnet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("wide_resnet", depth=10, widen_factor=1, num_classes=100).eval()
    model = model.to(memory_format=torch.channels_last)
    path = save_checkpoint(model, tmp_path / "sub" / "wrn.safetensors")
    loaded, _ = load_checkpoint(path)
    assert loaded.spec.depth == 10 and loaded.spec.widen_factor == 1 and loaded.num_classes == 100
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))


def test_save_requires_safetensors_suffix_and_json_metadata(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=".safetensors"):
        save_checkpoint(tiny(), tmp_path / "student.pt")
    with pytest.raises(UsageError, match="JSON"):
        save_checkpoint(tiny(), tmp_path / "student.safetensors", metadata={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny(), tmp_path / "student.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_sidecar_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: Path) -> str:
        raise OSError("cannot hash")

    monkeypatch.setattr(ckpt_module, "file_sha256", boom)
    with pytest.raises(OSError, match="cannot hash"):
        save_checkpoint(tiny(), tmp_path / "student.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_checkpoint(
    saved: tuple[Classifier, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, path = saved
    monkeypatch.setattr(ckpt_module, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_checkpoint(tiny(num_classes=5), path)
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file_points_to_foreign_loader(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    torch.save(tiny().net.state_dict(), path)
    with pytest.raises(CheckpointError, match="load_foreign_checkpoint.*--model"):
        load_checkpoint(path)


def test_sidecar_missing(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar missing"):
        load_checkpoint(path)


def test_sidecar_not_json_or_wrong_format(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    sidecar = path.with_suffix(".json")
    good = json.loads(sidecar.read_text())
    sidecar.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    sidecar.write_text(json.dumps({**good, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an rkd checkpoint sidecar"):
        load_checkpoint(path)
    sidecar.write_text(json.dumps({**good, "format_version": 2}))
    with pytest.raises(CheckpointError, match="upgrade rkd"):
        load_checkpoint(path)
    sidecar.write_text(json.dumps({**good, "model": {**good["model"], "depht": 3}}))
    with pytest.raises(CheckpointError, match="depht"):
        load_checkpoint(path)


def test_corrupted_bytes_give_sha_mismatch(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch.*changed or is corrupt"):
        load_checkpoint(path)


def test_corrupt_header_with_matching_sha(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    path.write_bytes(b"\xff" * 64)
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    record["sha256"] = ckpt_module.file_sha256(path)
    sidecar.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_checkpoint(path)


def test_wrong_num_classes_gives_shape_message(tmp_path: Path) -> None:
    path = save_checkpoint(tiny(num_classes=100), tmp_path / "c100.safetensors")
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    record["model"]["num_classes"] = 10
    sidecar.write_text(json.dumps(record))
    expected = r"shape mismatch for 'net\.linear\.weight'.*\(100, 64\).*\(10, 64\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_key_mismatch_lists_keys_and_counts(tmp_path: Path) -> None:
    path = save_checkpoint(tiny(), tmp_path / "r18.safetensors")
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    record["model"]["name"] = "preact_resnet18"
    sidecar.write_text(json.dumps(record))
    expected = r"5 missing key\(s\): net\.bn\.bias, .*; 20 unexpected key\(s\): net\.bn1\..*\(\+15 more\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_unknown_model_name_is_usage_error_with_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({}, path)
    with pytest.raises(UsageError, match="did you mean 'mobilenet_v2'"):
        load_foreign_checkpoint(path, model="mobilenet_v3", num_classes=10)


# --- foreign checkpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [None, "state_dict", "model_state_dict", "model", "net"])
def test_foreign_state_dict_with_module_prefix_loads(tmp_path: Path, wrap: str | None) -> None:
    src = tiny(name="mobilenet_v2").net  # width 0.125 -> the 8-channel minimum
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "teacher.pth"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    model = load_foreign_checkpoint(path, model="mobilenet_v2", num_classes=10, width=0.125)
    assert not model.training
    assert model.spec.mean == (0.0, 0.0, 0.0) and model.spec.std == (1.0, 1.0, 1.0)
    with torch.no_grad():
        assert torch.equal(model(X), src.eval()(X))


def test_foreign_net_prefix_and_safetensors_without_sidecar(tmp_path: Path) -> None:
    src = tiny(name="preact_resnet18").net
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({f"net.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = load_foreign_checkpoint(path, model="preact_resnet18", num_classes=10, width=0.125)
    with torch.no_grad():
        assert torch.equal(model(X), src.eval()(X))


def test_foreign_trades_wrn_with_sub_block1_and_old_bn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = create_model("wide_resnet", depth=10, widen_factor=2).net.eval()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    # TRADES builds an unused sub_block1 whose weights are in its released checkpoints.
    state.update({k.replace("block1.", "sub_block1.", 1): v.clone() for k, v in state.items()
                  if k.startswith("block1.")})
    path = tmp_path / "model-wideres-epoch76.pt"
    torch.save(state, path)
    model = load_foreign_checkpoint(path, model="wide_resnet", depth=10, widen_factor=2, num_classes=10)
    with torch.no_grad():
        assert torch.equal(model(X), src(X))


def test_foreign_shape_and_key_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(tiny().net.state_dict(), path)
    expected = r"shape mismatch for 'linear\.weight'.*\(10, 64\).*\(100, 64\)"
    with pytest.raises(CheckpointError, match=expected):
        load_foreign_checkpoint(path, model="resnet18", num_classes=100, width=0.125)
    with pytest.raises(CheckpointError, match=r"missing key\(s\).*unexpected key\(s\)"):
        load_foreign_checkpoint(path, model="mobilenet_v2", num_classes=10, width=0.125)
    with pytest.raises(CheckpointError, match="not found"):
        load_foreign_checkpoint(tmp_path / "none.pt", model="resnet18", num_classes=10)


def test_foreign_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_foreign_checkpoint(path, model="resnet18", num_classes=10, width=0.125)


CALLS: list[str] = []


def _side_effect(tag: str) -> str:
    CALLS.append(tag)
    return tag


class Payload:
    """Unpickling this calls ``_side_effect``: what a malicious checkpoint would do."""

    def __reduce__(self) -> tuple:
        return (_side_effect, ("executed",))


def test_pickled_object_is_refused_without_executing(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": Payload(), "linear.weight": torch.zeros(2)}, path)
    CALLS.clear()
    with pytest.raises(CheckpointError, match="not a plain state_dict.*will not unpickle"):
        load_foreign_checkpoint(path, model="resnet18", num_classes=10, width=0.125)
    assert CALLS == []
    # The file really does execute code under plain unpickling: the test above could fail.
    torch.load(path, weights_only=False)
    assert CALLS == ["executed"]
