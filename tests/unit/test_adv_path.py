"""The adversarial-path method: paths, weights, the loss against a slow per-iterate reference, and RSLAD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rkd.config import ADV_PATH_PRESETS
from rkd.distill.adv_path import AdvPath, AdvPaths, used_steps
from rkd.models import create_model

EPS, ALPHA = 8 / 255, 2 / 255
RECON = ADV_PATH_PRESETS["reconstruction"]  # two branches, CE path, teacher weights, per-sample mean


def _models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return create_model("resnet18", width=0.125), create_model("resnet18", width=0.25)


def _batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny model fit to a small learnable problem, so that attacks have something to move."""
    from rkd.data import load_dataset

    data = load_dataset("synthetic", "train", n=256, num_classes=10, seed=3)
    x, y = data.to_float(), data.y
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(4):
        for i in range(0, 256, 32):
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[:32], y[:32]


def reference_loss(method: AdvPath, x: torch.Tensor, y: torch.Tensor, paths: AdvPaths) -> torch.Tensor:
    """METHOD.md's objective, written plainly: separate teacher and student calls per iterate and branch."""
    teacher, student = method.teacher, method.student
    with torch.no_grad():
        pt_clean = F.softmax(teacher(x), 1)

    def kl(p: torch.Tensor, logits_s: torch.Tensor) -> torch.Tensor:  # per sample, sum over classes, / 10
        return (p * (p.clamp_min(1e-30).log() - F.log_softmax(logits_s, 1))).sum(1) / 10

    total = method.lambda_nat * kl(pt_clean, student(x)).mean()
    branches = [("u", paths.u, y)] + ([("t", paths.t, paths.targets)] if paths.t is not None else [])
    idx = torch.arange(len(y))
    for i, (name, path, cls) in enumerate(branches):
        ds, ls = [], []
        for k in range(path.shape[0]):
            with torch.no_grad():
                pt = F.softmax(teacher(path[k]), 1)
            target = pt_clean if method.align_target == "clean" else pt
            ls.append(kl(target, student(path[k])))
            if method.weight_model == "path":  # the crafting model's own probabilities, recorded by craft()
                p0, pk = paths.start_probs[i][idx, cls], paths.probs[i, k][idx, cls]
            else:
                p0, pk = pt_clean[idx, cls], pt[idx, cls]
            ds.append((p0 - pk).clamp_min(0) if name == "u" else (pk - p0).clamp_min(0))
        if method.weights == "uniform":
            ws = [torch.ones_like(d) for d in ds]
        elif method.weights == "linear":
            ws = [torch.full_like(d, k / method.steps) for k, d in zip(paths.steps, ds, strict=True)]
        else:
            dmax = max(float(d.max()) for d in ds)
            ws = [d / max(dmax, 1e-12) for d in ds]
        num = sum(w * kl_k for w, kl_k in zip(ws, ls, strict=True))
        den = sum(ws) + 1e-8 if method.aggregate == "mean" else 1.0
        branch = (num / den).mean()
        weight = 1.0 if name == "u" else method.gamma
        total = total + (1 - method.lambda_nat) * weight / (1 + (method.gamma if paths.t is not None else 0)) * branch
    return total


def test_used_steps() -> None:
    assert used_steps(10, 1) == list(range(1, 11))
    assert used_steps(10, 3) == [3, 6, 9, 10]
    assert used_steps(10, 10) == [10]
    assert used_steps(4, 8) == [4]


@pytest.mark.parametrize("stride", [1, 3])
def test_paths_stay_in_the_ball_and_have_m_iterates(stride: int) -> None:
    student, teacher = _models()
    method = AdvPath(student, teacher, **{**RECON, "iterate_stride": stride}, steps=5).eval()
    x, y = _batch()
    paths = method.craft(x, y)
    k = len(used_steps(5, stride))
    assert paths.u.shape == (k, 6, 3, 32, 32) and paths.t is not None and paths.t.shape == paths.u.shape
    for p in (paths.u, paths.t):
        assert float((p - x).abs().max()) <= EPS + 1e-6
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert paths.targets is not None and bool((paths.targets != y).all())


def test_untargeted_path_lowers_the_true_class_and_targeted_raises_the_target(trained) -> None:
    model, x, y = trained
    _, teacher = _models()
    method = AdvPath(model, teacher, **RECON, steps=5).eval()
    paths = method.craft(x, y)
    with torch.no_grad():
        p0 = F.softmax(model(x), 1)
        pu = F.softmax(model(paths.u[-1]), 1)
        pt = F.softmax(model(paths.t[-1]), 1)
    idx = torch.arange(len(y))
    assert float(pu[idx, y].mean()) < float(p0[idx, y].mean()) - 0.05
    assert float(pt[idx, paths.targets].mean()) > float(p0[idx, paths.targets].mean()) + 0.05


def test_weights_lie_in_unit_interval_with_batch_max_one(trained) -> None:
    model, x, y = trained
    _, teacher = _models()
    method = AdvPath(model, teacher, **RECON, steps=4).eval()
    # use the trained model as its own teacher so that probabilities move along the path
    method.teacher = model
    paths = method.craft(x, y)
    with torch.no_grad():
        logits = model(torch.cat([paths.u.flatten(0, 1), paths.t.flatten(0, 1)]))
        p_iter = F.softmax(logits, 1).view(2, 4, len(y), -1)
        p_clean = F.softmax(model(x), 1)
    for i, (name, cls) in enumerate((("u", y), ("t", paths.targets))):
        w = method._weights(name, p_iter[i], p_clean, cls, paths, i)
        assert w.shape == (4, len(y))
        assert float(w.min()) >= 0.0 and float(w.max()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "knobs",
    [{}, RECON, {**RECON, "iterate_stride": 2}, {**RECON, "align_target": "clean"}, {**RECON, "weights": "uniform"},
     {**RECON, "gamma": 0.0}, {**RECON, "gamma": 0.5, "lambda_nat": 0.3}, {**RECON, "aggregate": "sum"},
     {**RECON, "weight_model": "path"}, {**RECON, "weights": "linear"},
     {**RECON, "aggregate": "sum", "weight_model": "path", "step_loss": "kl", "gamma": 0.0},
     {**RECON, "aggregate": "sum", "weight_model": "path", "step_loss": "kl", "target": "runner_up",
      "iterate_stride": 2}],
    ids=["defaults", "reconstruction", "stride2", "clean-target", "uniform", "no-targeted", "gamma-lambda", "sum",
         "path-weights", "linear", "sum-path-kl", "sum-path-kl-two-branches"],
)
def test_fast_loss_equals_the_per_iterate_reference(knobs: dict) -> None:
    student, teacher = _models()
    method = AdvPath(student, teacher, steps=4, **knobs, generator=torch.Generator().manual_seed(5))
    method.eval()  # batch-norm running statistics: outputs independent of how inputs are batched
    x, y = _batch()
    paths = method.craft(x, y)
    fast = method.loss_on(x, y, paths)
    ref = reference_loss(method, x, y, paths)
    assert fast.loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    assert sum(fast.parts.values()).item() == pytest.approx(fast.loss.item(), rel=1e-6)


def test_chunked_alignment_pass_gives_the_same_loss() -> None:
    student, teacher = _models()
    x, y = _batch()
    a = AdvPath(student, teacher, steps=3, generator=torch.Generator().manual_seed(2)).eval()
    b = AdvPath(student, teacher, steps=3, max_batch=5, generator=torch.Generator().manual_seed(2)).eval()
    paths = a.craft(x, y)
    assert b.loss_on(x, y, paths).loss.item() == pytest.approx(a.loss_on(x, y, paths).loss.item(), rel=1e-6)


@pytest.mark.parametrize("max_batch", [None, 4], ids=["chunks-of-B", "chunks-of-4"])
def test_low_memory_backward_gives_the_gradient_of_the_whole_loss(max_batch: int | None) -> None:
    """backward_on accumulates the gradient chunk by chunk: the same loss, parts, gradient and batch-norm
    statistics as backward() on loss_on's one graph (train mode, batch statistics per chunk)."""
    import copy

    student, teacher = _models()
    x, y = _batch()
    runs = []
    for low in (False, True):
        net = copy.deepcopy(student)
        method = AdvPath(net, teacher, steps=3, max_batch=max_batch, low_memory=low,
                         generator=torch.Generator().manual_seed(4)).train()
        paths = method.craft(x, y)
        for p in net.parameters():
            p.grad = torch.ones_like(p)  # stale gradient: must be replaced, not added to
        if low:
            out = method.backward_on(x, y, paths)
            assert out.backward_done and not out.loss.requires_grad
        else:
            out = method.loss_on(x, y, paths)
            for p in net.parameters():
                p.grad = None
            out.loss.backward()
        runs.append((out, net))
    (a, net_a), (b, net_b) = runs
    assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-5)
    assert {k: v.item() for k, v in b.parts.items()} == pytest.approx({k: v.item() for k, v in a.parts.items()},
                                                                      rel=1e-5)
    assert torch.allclose(b.logits, a.logits, atol=1e-5)
    for (name, pa), pb in zip(net_a.named_parameters(), net_b.parameters(), strict=True):
        assert torch.allclose(pb.grad, pa.grad, rtol=1e-4, atol=1e-6), name
    for ba, bb in zip(net_a.buffers(), net_b.buffers(), strict=True):
        assert torch.allclose(ba.float(), bb.float(), atol=1e-6)


def test_low_memory_is_used_in_training_steps_only() -> None:
    student, teacher = _models()
    x, y = _batch()
    method = AdvPath(student, teacher, steps=2, low_memory=True)
    assert method.train()(x, y).backward_done
    assert not method.eval()(x, y).backward_done  # evaluation: a plain loss, no gradient written
    with torch.no_grad():
        assert not method.train()(x, y).backward_done


def test_reduced_to_rslad_it_equals_rslad_on_the_same_x_adv() -> None:
    """Targeted branch off, only the last iterate, uniform weights, clean-teacher target: RSLAD's loss."""
    from rkd.distill.rslad import Rslad

    student, teacher = _models()
    x, y = _batch()
    rslad = Rslad(student, teacher, steps=3)
    x_adv = rslad.craft(x, y)
    method = AdvPath(student, teacher, steps=3, gamma=0.0, iterate_stride=3, weights="uniform",
                     align_target="clean")
    method.train()
    paths = AdvPaths(u=x_adv[None], t=None, targets=None, steps=[3])
    ours = method.loss_on(x, y, paths).loss
    student.train()
    theirs = rslad.loss_on(x, y, x_adv).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_one_training_step_trains_only_the_student() -> None:
    student, teacher = _models()
    method = AdvPath(student, teacher, **RECON, steps=2).train()
    x, y = _batch()
    out = method(x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert student.training  # crafting in eval mode restored the mode
    assert set(out.parts) == {"path_u", "path_t", "kd_nat"}


@pytest.mark.parametrize(
    "knob",
    [{"path_model": "teacher"}, {"target": "runner_up"}, {"target": "least_likely"}, {"step_loss": "cw"},
     {"weights": "linear"}, {"weights": "entropy"}, {"reliability": True}, {"crafting_mode": "train"},
     {"temperature": 4.0}, {"step_loss": "kl"}, {"aggregate": "sum"}, {"weight_model": "path"}],
    ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()),
)
def test_every_knob_changes_the_step(knob: dict, trained) -> None:
    """Each alternative of METHOD.md's knob table is used, not silently ignored: same seed, different loss."""
    teacher, x, y = trained  # a trained teacher: its probabilities vary along the path
    losses = []
    for knobs in (RECON, {**RECON, **knob}):  # each alternative against the reconstruction it departs from
        torch.manual_seed(11)
        student = create_model("resnet18", width=0.125)
        method = AdvPath(student, teacher, steps=3, **knobs, generator=torch.Generator().manual_seed(7)).train()
        out = method(x[:8], y[:8])
        assert torch.isfinite(out.loss)
        losses.append(out.loss.item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-6)


def test_targets_follow_the_target_knob() -> None:
    student, teacher = _models()
    x, y = _batch()
    with torch.no_grad():
        logits = teacher(x)
    masked = logits.clone()
    masked[torch.arange(len(y)), y] = float("-inf")
    runner = AdvPath(student, teacher, target="runner_up").choose_targets(y, logits)
    assert torch.equal(runner, masked.argmax(1))
    masked[torch.arange(len(y)), y] = float("inf")
    least = AdvPath(student, teacher, target="least_likely").choose_targets(y, logits)
    assert torch.equal(least, masked.argmin(1))
    rand = AdvPath(student, teacher, generator=torch.Generator().manual_seed(0)).choose_targets(y, logits)
    assert bool((rand != y).all())
