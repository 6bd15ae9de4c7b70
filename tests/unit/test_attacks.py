"""Unit tests of rkd.attacks: PGD/FGSM/CW-inf geometry and strength, analytic steps on a linear model, model
state hygiene, argument checks, and the AutoAttack adapter (CPU, small synthetic data)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rkd.attacks import (
    AttackResult,
    AutoAttackResult,
    cw_inf,
    cw_margin,
    fgsm,
    pgd,
    run_autoattack,
)
from rkd.errors import UsageError

Data = tuple[torch.Tensor, torch.Tensor]
EPS = 8 / 255
TOL = 1e-6
N_CLASSES = 10
SIZE = 16


# ------------------------------------------------------------------------------------------------------------
# Fixtures: a learnable synthetic problem and a tiny conv net trained on it for ~2 s; a linear model.


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent colour prototypes and stripe patterns, plus noise; values in [0, 1]."""
    g = torch.Generator().manual_seed(1234)
    colours = torch.rand(N_CLASSES, 3, 1, 1, generator=g) * 0.3 + 0.35  # close enough that 8/255 matters
    phase = torch.arange(SIZE).float()
    stripes = torch.stack([torch.sin(phase * (c + 1) * 0.35) for c in range(N_CLASSES)])  # (K, W)
    gs = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=gs)
    x = (
        colours[y]
        + 0.03 * stripes[y].view(n, 1, 1, SIZE)
        + 0.08 * torch.randn(n, 3, SIZE, SIZE, generator=gs)
    )
    return x.clamp(0.0, 1.0), y


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@contextmanager
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast when the machine is idle, and 10-100x faster when other
    processes load the 2 cores (two OpenMP threads then wait on each other). Runs after tests/conftest.py's
    per-test thread setting, and restores it."""
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def data() -> Data:
    return _synthetic(64, seed=1)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet()
    x, y = _synthetic(1024, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    with _single_thread():  # ~1 s; a fixed epoch count keeps the model deterministic
        for _epoch in range(20):
            for xb, yb in zip(x.split(128), y.split(128), strict=True):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture
def model(trained: nn.Module) -> nn.Module:
    """A fresh copy per test, so tests that toggle flags cannot leak into each other."""
    return copy.deepcopy(trained).eval()


class Linear(nn.Module):
    """logits = W x_flat + b: input gradients are known in closed form."""

    def __init__(self, n_classes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * SIZE * SIZE, n_classes)
        with torch.no_grad():
            self.fc.weight.copy_(0.02 * torch.randn(n_classes, 3 * SIZE * SIZE, generator=g))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _mid_images(n: int, seed: int = 0) -> torch.Tensor:
    """Images in [0.25, 0.75]: a step of size <= 0.25 never touches the [0, 1] box."""
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 0.5 + 0.25


def _edge_images(n: int) -> torch.Tensor:
    """Images with many pixels exactly at 0 and 1, so that box clipping is exercised."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    x[:, 0] = 0.0
    x[:, 1, : SIZE // 2] = 1.0
    return x


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(dim=1)


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _assert_inside(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> None:
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    dist = _linf(x_adv, x) if norm == "linf" else _l2(x_adv, x)
    assert float(dist.max()) <= eps + TOL


# ------------------------------------------------------------------------------------------------------------
# Geometry: every output and every iterate in the eps-ball and in [0, 1].


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
@pytest.mark.parametrize("start", ["random", "zero", "gaussian"])
def test_pgd_stays_in_ball_and_box(model: nn.Module, data: Data, norm: str, eps: float, start: str) -> None:
    x, y = data
    x = torch.cat([x[:8], _edge_images(8)])
    y = y[:16]
    res = pgd(
        model,
        x,
        y,
        eps=eps,
        alpha=eps / 2,
        steps=5,
        norm=norm,
        start=start,
        generator=torch.Generator().manual_seed(0),
    )
    assert isinstance(res, AttackResult) and res.path is None
    _assert_inside(res.x_adv, x, norm, eps)
    assert float(_linf(res.x_adv, x).max()) > 0  # it moved


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
def test_random_start_is_inside_and_spread(norm: str, eps: float) -> None:
    x = _edge_images(4)
    zero = Linear(N_CLASSES)
    # alpha tiny: the result is essentially the start point.
    res = pgd(
        zero,
        x,
        torch.zeros(4, dtype=torch.long),
        eps=eps,
        alpha=1e-9,
        steps=1,
        norm=norm,
        generator=torch.Generator().manual_seed(3),
    )
    _assert_inside(res.x_adv, x, norm, eps)
    dist = _linf(res.x_adv, x) if norm == "linf" else _l2(res.x_adv, x)
    assert float(dist.min()) > 0.0 and float(dist.mean()) > eps / 10  # a real random start, not x


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
def test_path_iterates(model: nn.Module, data: Data, norm: str, eps: float) -> None:
    x, y = data[0][:8], data[1][:8]
    steps = 4
    res = pgd(
        model,
        x,
        y,
        eps=eps,
        alpha=eps / 3,
        steps=steps,
        norm=norm,
        return_path=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.path is not None
    assert res.path.shape == (steps, *x.shape)
    for k in range(steps):
        _assert_inside(res.path[k], x, norm, eps)
    assert torch.equal(res.path[-1], res.x_adv)
    assert not torch.equal(res.path[0], res.path[1])  # distinct iterates, not one tensor repeated


def test_path_matches_step_by_step_attack(model: nn.Module, data: Data) -> None:
    """Iterate k of a path equals the result of a k-step attack from the same start."""
    x, y = data[0][:6], data[1][:6]
    res = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=3, start="zero", return_path=True)
    for k in range(1, 4):
        xk = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=k, start="zero").x_adv
        torch.testing.assert_close(res.path[k - 1], xk, rtol=0, atol=1e-7)


@pytest.mark.parametrize("start", ["random", "zero", "gaussian"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_channels_last_is_kept(model: nn.Module, data: Data, start: str, norm: str) -> None:
    """Every iterate keeps the input's channels_last layout (the model's fast path), whatever the start."""
    x = data[0][:4].contiguous(memory_format=torch.channels_last)
    res = pgd(
        model, x, data[1][:4], eps=EPS, alpha=2 / 255, steps=2, norm=norm, start=start, return_path=True
    )
    assert res.x_adv.is_contiguous(memory_format=torch.channels_last)
    assert res.path[0].is_contiguous(memory_format=torch.channels_last)
    plain = pgd(model, x, data[1][:4], eps=EPS, alpha=2 / 255, steps=2, norm=norm, start=start).x_adv
    assert plain.is_contiguous(memory_format=torch.channels_last)
    flat = res.path.flatten(0, 1)
    assert flat.shape == (8, 3, SIZE, SIZE)


# ------------------------------------------------------------------------------------------------------------
# Strength on the trained model.


def test_trained_model_is_accurate(model: nn.Module, data: Data) -> None:
    assert _accuracy(model, *data) >= 0.9


def test_attack_ordering_and_loss(model: nn.Module, data: Data) -> None:
    x, y = data
    eps = 4 / 255
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y).item()
    x_pgd = pgd(
        model, x, y, eps=eps, alpha=1 / 255, steps=10, generator=torch.Generator().manual_seed(0)
    ).x_adv
    with torch.no_grad():
        pgd_loss = F.cross_entropy(model(x_pgd), y).item()
    assert pgd_loss >= clean_loss
    acc_clean = _accuracy(model, x, y)
    acc_fgsm = _accuracy(model, fgsm(model, x, y, eps=eps), y)
    acc_pgd = _accuracy(model, x_pgd, y)
    acc_cw = _accuracy(model, cw_inf(model, x, y, eps=eps, alpha=1 / 255, steps=10), y)
    assert acc_pgd <= acc_fgsm <= acc_clean
    assert acc_pgd < acc_clean - 0.2  # the eps is meaningful: PGD really hurts
    assert acc_cw < acc_clean - 0.2


def test_targeted_raises_target_probability(model: nn.Module, data: Data) -> None:
    x, y = data
    t = (
        y + 1 + torch.randint(0, N_CLASSES - 1, y.shape, generator=torch.Generator().manual_seed(0))
    ) % N_CLASSES
    assert bool((t != y).all())
    x_t = pgd(
        model,
        x,
        t,
        eps=EPS,
        alpha=2 / 255,
        steps=10,
        targeted=True,
        start="gaussian",
        generator=torch.Generator().manual_seed(0),
    ).x_adv
    with torch.no_grad():
        p0 = model(x).softmax(1).gather(1, t[:, None]).squeeze(1)
        p1 = model(x_t).softmax(1).gather(1, t[:, None]).squeeze(1)
        hit = (model(x_t).argmax(1) == t).float().mean().item()
    assert float(p1.mean()) > float(p0.mean()) + 0.1
    assert hit > 0.2
    # the CW variant of the targeted step as well
    x_cw = pgd(model, x, t, eps=EPS, alpha=2 / 255, steps=10, targeted=True, loss="cw", start="zero").x_adv
    with torch.no_grad():
        p2 = model(x_cw).softmax(1).gather(1, t[:, None]).squeeze(1)
    assert float(p2.mean()) > float(p0.mean()) + 0.1


# ------------------------------------------------------------------------------------------------------------
# Analytic steps on a linear model.


def test_linear_one_step_ce_two_classes() -> None:
    """2 classes: grad_x CE(Wx, y) = p_o (w_o - w_y): one L-inf step moves exactly alpha * sign(w_o - w_y)."""
    lin = Linear(2).double().eval()  # float64: no sign flips from rounding where w_o ~ w_y
    x = _mid_images(5).double()
    y = torch.tensor([0, 1, 0, 1, 1])
    alpha = 0.01
    x1 = pgd(lin, x, y, eps=0.1, alpha=alpha, steps=1, start="zero").x_adv
    w = lin.fc.weight.detach()
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    torch.testing.assert_close(x1 - x, alpha * direction, rtol=0, atol=1e-6)
    # targeted towards the other class: descend CE(t) -> the same direction
    xt = pgd(lin, x, 1 - y, eps=0.1, alpha=alpha, steps=1, start="zero", targeted=True).x_adv
    torch.testing.assert_close(xt - x, alpha * direction, rtol=0, atol=1e-6)


def test_linear_one_step_cw_and_l2() -> None:
    """CW margin: grad = w_j* - w_y (j* = the best other class); L2 step = alpha * g / ||g||."""
    lin = Linear(N_CLASSES, seed=1).double().eval()
    x = _mid_images(6, seed=2).double()
    y = torch.arange(6) % N_CLASSES
    w = lin.fc.weight.detach()
    with torch.no_grad():
        z = lin(x)
    other = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    g = (w[other] - w[y]).view_as(x)
    alpha = 0.02
    x1 = pgd(lin, x, y, eps=0.1, alpha=alpha, steps=1, start="zero", loss="cw").x_adv
    torch.testing.assert_close(x1 - x, alpha * g.sign(), rtol=0, atol=1e-6)
    x2 = pgd(lin, x, y, eps=1.0, alpha=alpha, steps=1, start="zero", loss="cw", norm="l2").x_adv
    expected = alpha * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(x2 - x, expected, rtol=0, atol=1e-6)


def test_callable_loss_and_step_fn_are_ascended() -> None:
    lin = Linear(N_CLASSES, seed=3).double().eval()
    x = _mid_images(3).double()
    w0 = lin.fc.weight.detach()[0].view(3, SIZE, SIZE)
    # per-sample callable: logit of class 0 -> grad w_0
    x1 = pgd(
        lin,
        x,
        torch.zeros(3, dtype=torch.long),
        eps=0.1,
        alpha=0.01,
        steps=1,
        start="zero",
        loss=lambda logits, _y: logits[:, 0],
    ).x_adv
    torch.testing.assert_close(x1 - x, 0.01 * w0.sign().expand_as(x), rtol=0, atol=1e-6)
    # targeted with a callable: descended
    x2 = pgd(
        lin,
        x,
        torch.zeros(3, dtype=torch.long),
        eps=0.1,
        alpha=0.01,
        steps=1,
        start="zero",
        loss=lambda logits, _y: logits[:, 0].sum(),
        targeted=True,
    ).x_adv
    torch.testing.assert_close(x2 - x, -0.01 * w0.sign().expand_as(x), rtol=0, atol=1e-6)
    # step_fn replaces model + loss; y can be anything
    v = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)).double()
    x3 = pgd(
        lin,
        x,
        None,
        eps=0.1,
        alpha=0.01,
        steps=1,
        start="zero",
        loss=lambda z, t: z.sum(),
        step_fn=lambda xa: (xa * v).flatten(1).sum(1),
    ).x_adv
    torch.testing.assert_close(x3 - x, 0.01 * v.sign().expand_as(x), rtol=0, atol=1e-6)


def test_x_init_is_the_start_and_is_projected(model: nn.Module, data: Data) -> None:
    x, y = data[0][:4], data[1][:4]
    far = (x + 0.5).clamp(0, 1)  # outside the ball: projected first
    a = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=2, x_init=far, return_path=True)
    for k in range(2):
        _assert_inside(a.path[k], x, "linf", EPS)
    x0 = pgd(model, x, y, eps=EPS, alpha=1e-9, steps=1, start="zero", x_init=x + EPS / 2).x_adv
    torch.testing.assert_close(x0, (x + EPS / 2).clamp(0, 1), rtol=0, atol=1e-6)
    with pytest.raises(UsageError, match="x_init"):
        pgd(model, x, y, eps=EPS, alpha=1 / 255, steps=1, x_init=x[:2])


def test_fgsm_is_one_zero_start_step(model: nn.Module, data: Data) -> None:
    x, y = data[0][:8], data[1][:8]
    a = fgsm(model, x, y, eps=EPS)
    b = pgd(model, x, y, eps=EPS, alpha=EPS, steps=1, start="zero").x_adv
    assert torch.equal(a, b)
    _assert_inside(a, x, "linf", EPS)


def test_cw_margin_hand_made() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, -4.0], [-1.0, -2.0, -0.5]])
    y = torch.tensor([0, 0, 2, 2])
    expected = torch.tensor([1.0 - 2.0, 3.0 - 0.0, 1.0 - (-4.0), -1.0 - (-0.5)])
    torch.testing.assert_close(cw_margin(logits, y), expected)
    assert cw_margin(logits.half(), y).dtype == torch.float32


# ------------------------------------------------------------------------------------------------------------
# Model state hygiene.


def test_requires_grad_mode_and_grads_untouched(model: nn.Module, data: Data) -> None:
    x, y = data[0][:4], data[1][:4]
    model.head.bias.requires_grad_(False)  # a mixed pattern must come back exactly
    before = [p.requires_grad for p in model.parameters()]
    for train in (False, True):
        model.train(train)
        bn_mean = model.features[1].running_mean.clone()
        pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=2, return_path=True)
        fgsm(model, x, y, eps=EPS)
        assert model.training is train
        assert all(m.training is train for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == before
        assert all(p.grad is None for p in model.parameters())
        if not train:
            assert torch.equal(model.features[1].running_mean, bn_mean)


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Linear(N_CLASSES)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return self.inner(x)


def test_requires_grad_restored_when_model_raises() -> None:
    m = Exploding().eval()
    m.inner.fc.bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="boom"):
        pgd(m, _mid_images(2), torch.zeros(2, dtype=torch.long), eps=EPS, alpha=1 / 255, steps=3)
    assert m.inner.fc.weight.requires_grad is True
    assert m.inner.fc.bias.requires_grad is False
    assert m.inner.fc.weight.grad is None


def test_no_grad_context_and_inference_tensor(model: nn.Module, data: Data) -> None:
    x, y = data[0][:4], data[1][:4]
    with torch.no_grad():
        a = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=2, start="zero").x_adv
    with torch.inference_mode():
        xi = x.clone()
    b = pgd(model, xi, y, eps=EPS, alpha=2 / 255, steps=2, start="zero").x_adv
    assert torch.equal(a, b)
    with torch.inference_mode(), pytest.raises(UsageError, match="inference_mode"):
        pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=1)


def test_autocast_cpu_bf16(model: nn.Module, data: Data) -> None:
    x, y = data[0][:8], data[1][:8]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=3, return_path=True)
    assert res.x_adv.dtype == torch.float32
    _assert_inside(res.x_adv, x, "linf", EPS)


def test_generator_reproducible(model: nn.Module, data: Data) -> None:
    x, y = data[0][:4], data[1][:4]

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=2, generator=gen).x_adv

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_batch_composition_does_not_matter(trained: nn.Module, data: Data) -> None:
    """Summed CE: attacking sample i alone equals attacking it inside a batch (eval mode, zero start)."""
    m = copy.deepcopy(trained).double().eval()
    x, y = data[0][:6].double(), data[1][:6]
    batch = pgd(m, x, y, eps=EPS, alpha=2 / 255, steps=5, start="zero").x_adv
    for i in range(6):
        alone = pgd(m, x[i : i + 1], y[i : i + 1], eps=EPS, alpha=2 / 255, steps=5, start="zero").x_adv
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=1e-12)


def test_empty_batch(model: nn.Module) -> None:
    x = torch.rand(0, 3, SIZE, SIZE)
    y = torch.zeros(0, dtype=torch.long)
    assert pgd(model, x, y, eps=EPS, alpha=1 / 255, steps=2).x_adv.shape == x.shape
    assert pgd(model, x, y, eps=EPS, alpha=1 / 255, steps=2, return_path=True).path.shape == (2, *x.shape)


def test_compiled_plumbing(model: nn.Module, data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    """compiled=True runs through the process-wide compiled call (eager backend: inductor takes ~20 s)."""
    import rkd.attacks.compiled as compiled

    monkeypatch.setattr(compiled, "_compiled_call", torch.compile(compiled._call, backend="eager"))
    x, y = data[0][:4], data[1][:4]
    a = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=2, start="zero", compiled=True).x_adv
    b = pgd(model, x, y, eps=EPS, alpha=2 / 255, steps=2, start="zero").x_adv
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------------------------------
# Argument checks.


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5, 8.0, float("nan")])
def test_bad_eps(model: nn.Module, data: Data, eps: float) -> None:
    with pytest.raises(UsageError, match=r"eps must be in \(0, 1\]"):
        pgd(model, data[0][:2], data[1][:2], eps=eps, alpha=1 / 255, steps=1)


@pytest.mark.parametrize("bad", ["0-255", "centred", "one pixel"])
def test_inputs_outside_unit_box(model: nn.Module, data: Data, bad: str) -> None:
    x = data[0][:2].clone()
    if bad == "0-255":
        x = x * 255
    elif bad == "centred":
        x = x - 0.5
    else:
        x[1, 2, 3, 4] = 1.001
    with pytest.raises(UsageError, match=r"inputs must be in \[0, 1\].*normalisation"):
        pgd(model, x, data[1][:2], eps=EPS, alpha=1 / 255, steps=1)
    with pytest.raises(UsageError, match=r"inputs must be in \[0, 1\]"):
        fgsm(model, x, data[1][:2], eps=EPS)


def test_nan_inputs_rejected(model: nn.Module, data: Data) -> None:
    x = data[0][:2].clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        pgd(model, x, data[1][:2], eps=EPS, alpha=1 / 255, steps=1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"alpha": 0.0}, "alpha"),
        ({"norm": "l3"}, "norm"),
        ({"start": "uniform"}, "start"),
        ({"loss": "hinge"}, "loss"),
    ],
)
def test_bad_arguments(model: nn.Module, data: Data, kwargs: dict, match: str) -> None:
    args = {"eps": EPS, "alpha": 1 / 255, "steps": 1, **kwargs}
    with pytest.raises(UsageError, match=match):
        pgd(model, data[0][:2], data[1][:2], **args)


def test_bad_shapes(model: nn.Module, data: Data) -> None:
    x, y = data[0][:4], data[1][:4]
    with pytest.raises(UsageError, match="shape"):
        pgd(model, x, y[:3], eps=EPS, alpha=1 / 255, steps=1)
    with pytest.raises(UsageError, match="integer"):
        pgd(model, x, y.float(), eps=EPS, alpha=1 / 255, steps=1)
    with pytest.raises(UsageError, match="shape"):
        pgd(model, x[0], y, eps=EPS, alpha=1 / 255, steps=1)
    with pytest.raises(UsageError, match="floating"):
        pgd(model, (x * 255).to(torch.uint8), y, eps=EPS, alpha=1 / 255, steps=1)


def test_l2_eps_may_exceed_one(model: nn.Module, data: Data) -> None:
    x, y = data[0][:2], data[1][:2]
    res = pgd(model, x, y, eps=1.5, alpha=0.5, steps=2, norm="l2")
    _assert_inside(res.x_adv, x, "l2", 1.5)


# ------------------------------------------------------------------------------------------------------------
# AutoAttack adapter.

AA_EPS = 4 / 255


def _check_aa_result(res: AutoAttackResult, x: torch.Tensor, eps: float) -> None:
    n = x.shape[0]
    assert res.robust.dtype == torch.bool and res.robust.shape == (n,)
    _assert_inside(res.x_adv, x, "linf", eps)
    assert bool((res.robust <= res.clean).all())  # robust implies clean-correct
    prev = res.clean
    for name in res.attacks:
        cur = res.per_attack[name]
        assert bool((cur <= prev).all())  # cumulative: never grows
        prev = cur
    assert torch.equal(res.robust, prev)
    for i in range(n):
        b = res.broken_by[i]
        assert (b is None) == bool(res.robust[i])
        assert (b == "clean") == (not bool(res.clean[i]))
        if b in res.attacks:
            k = res.attacks.index(b)
            assert not bool(res.per_attack[b][i])
            if k > 0:
                assert bool(res.per_attack[res.attacks[k - 1]][i])
        if b is not None and b != "clean":
            assert bool(res.clean[i])
            assert torch.equal(res.x_adv[i], res.x_adv[i])  # finite
        if b is None or b == "clean":
            assert torch.equal(res.x_adv[i], x[i])


def test_autoattack_custom_apgd_ce(model: nn.Module, data: Data) -> None:
    x, y = data[0][:16], data[1][:16]
    rng_before = torch.get_rng_state()
    lines: list[str] = []
    res = run_autoattack(model, x, y, eps=AA_EPS, attacks=["apgd-ce"], batch_size=8, log=lines.append)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert res.version == "custom" and res.attacks == ["apgd-ce"] and res.norm == "Linf"
    _check_aa_result(res, x, AA_EPS)
    assert isinstance(res.messages, list)
    assert any("apgd-ce" in line for line in lines)
    # the robust claim is rechecked here with the model
    with torch.no_grad():
        assert torch.equal(res.robust, (model(res.x_adv).argmax(1) == y) & (model(x).argmax(1) == y))
    # at least as strong as PGD-20 (random start) on the same samples
    x_pgd = pgd(
        model, x, y, eps=AA_EPS, alpha=1 / 255, steps=20, generator=torch.Generator().manual_seed(0)
    ).x_adv
    with torch.no_grad():
        pgd_robust = (model(x_pgd).argmax(1) == y) & (model(x).argmax(1) == y)
    assert int(res.robust.sum()) <= int(pgd_robust.sum())
    assert int(res.robust.sum()) < int(res.clean.sum())  # it broke something
    # model hygiene: frozen during the run, restored after, no .grad, mode unchanged
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_autoattack_standard_small(model: nn.Module, data: Data) -> None:
    """Standard AutoAttack on 8 images (~7 s on one idle core): every sub-attack runs on the survivors."""
    x, y = data[0][16:24], data[1][16:24]
    eps = 4 / 255  # some points fall to APGD-CE, the rest go through all four attacks
    res = run_autoattack(model, x, y, eps=eps, version="standard", batch_size=8)
    assert res.version == "standard"
    assert res.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(res.seconds) == set(res.attacks)
    assert 0 < int(res.robust.sum()) < int(res.clean.sum())
    _check_aa_result(res, x, eps)
    assert all(p.grad is None for p in model.parameters())
    x_pgd = pgd(
        model, x, y, eps=eps, alpha=eps / 4, steps=20, generator=torch.Generator().manual_seed(0)
    ).x_adv
    with torch.no_grad():
        pgd_robust = (model(x_pgd).argmax(1) == y) & (model(x).argmax(1) == y)
    assert int(res.robust.sum()) <= int(pgd_robust.sum())


def test_autoattack_state_resume(model: nn.Module, data: Data, tmp_path: Path) -> None:
    x, y = data[0][:8], data[1][:8]
    state = tmp_path / "aa.state"
    first = run_autoattack(model, x, y, eps=AA_EPS, attacks=["apgd-ce"], state_path=state)
    assert state.exists()
    t0 = time.monotonic()
    again = run_autoattack(model, x, y, eps=AA_EPS, attacks=["apgd-ce"], state_path=str(state))
    assert time.monotonic() - t0 < 5.0
    assert torch.equal(first.robust, again.robust)
    assert torch.equal(first.x_adv, again.x_adv)
    assert first.broken_by == again.broken_by
    with pytest.raises(UsageError, match=r"another run.*eps"):
        run_autoattack(model, x, y, eps=2 / 255, attacks=["apgd-ce"], state_path=state)
    with pytest.raises(UsageError, match="another run"):
        run_autoattack(model, x.flip(0), y.flip(0), eps=AA_EPS, attacks=["apgd-ce"], state_path=state)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(UsageError, match=r"another run.*model_sha256"):  # another model's result is not reused
        run_autoattack(other, x, y, eps=AA_EPS, attacks=["apgd-ce"], state_path=state)


class Interruptible(nn.Module):
    """Raises once ``armed``: stands in for a run killed in the middle."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("interrupted")
        return self.inner(x)


def test_autoattack_resumes_inside_an_attack(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed during the second chunk of APGD-CE, the resumed run equals an uninterrupted one."""
    import rkd.attacks.autoattack as aa_module

    monkeypatch.setattr(aa_module, "_SAVE_EVERY_S", 0.0)  # save after every chunk
    x, y = data[0][:8], data[1][:8]
    kw = {"eps": AA_EPS, "attacks": ["apgd-ce", "apgd-t"], "batch_size": 4}
    full = run_autoattack(model, x, y, **kw)

    flaky = Interruptible(model).eval()
    chunks = 0
    library_lines: list[str] = []

    class ArmOnSecondChunk(logging.Handler):  # the library's progress lines reach rkd's log, not ``log``
        def emit(self, record: logging.LogRecord) -> None:
            nonlocal chunks
            line = record.getMessage().removeprefix("AutoAttack: ")
            library_lines.append(line)
            if line.startswith("using custom version"):
                chunks += 1
                flaky.armed = chunks == 2

    aa_logger = logging.getLogger("rkd.attacks.autoattack")
    handler, level = ArmOnSecondChunk(), aa_logger.level
    aa_logger.addHandler(handler)
    aa_logger.setLevel(logging.INFO)
    try:
        state = tmp_path / "aa.state"
        with pytest.raises(RuntimeError, match="interrupted"):
            run_autoattack(flaky, x, y, state_path=state, **kw)
        assert chunks == 2 and state.exists()
        assert all(p.requires_grad for p in model.parameters())
        lines: list[str] = []
        library_lines.clear()
        resumed = run_autoattack(model, x, y, state_path=state, log=lines.append, **kw)
    finally:
        aa_logger.removeHandler(handler)
        aa_logger.setLevel(level)
    assert any("resumed" in line for line in lines)
    assert not any(line.startswith("using custom version") for line in lines)
    assert sum(line.startswith("using custom version including apgd-ce") for line in library_lines) == 1
    assert resumed.broken_by == full.broken_by
    assert torch.equal(resumed.robust, full.robust)
    assert torch.equal(resumed.x_adv, full.x_adv)


def test_autoattack_clean_errors_and_contiguity(model: nn.Module, data: Data) -> None:
    x, y = data[0][:6], data[1][:6].clone()
    y[:2] = (y[:2] + 1) % N_CLASSES  # two clean errors
    nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # non-contiguous NCHW view
    assert not nhwc.is_contiguous()
    res = run_autoattack(model, nhwc, y, eps=AA_EPS, attacks=["apgd-ce", "square"], batch_size=4)
    assert res.broken_by[0] == "clean" and res.broken_by[1] == "clean"
    assert res.attacks == ["apgd-ce", "square"]
    _check_aa_result(res, x, AA_EPS)


class RoundedInput(nn.Module):
    """Rounds its input to multiples of 1/16 first: zero input gradients, the classic masked model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 16) / 16)


def test_autoattack_flags_gradient_masking(model: nn.Module, data: Data) -> None:
    """Square breaks what APGD-CE cannot: the breakdown shows it and the library's Square check fires."""
    x, y = data[0][:16], data[1][:16]
    masked = RoundedInput(model).eval()
    res = run_autoattack(masked, x, y, eps=AA_EPS, attacks=["apgd-ce", "square"], batch_size=16)
    _check_aa_result(res, x, AA_EPS)
    assert res.broken_by.count("square") >= 2
    assert any("Square Attack has decreased the robust accuracy" in m for m in res.messages)


def test_autoattack_empty_input(model: nn.Module) -> None:
    """No points to attack (e.g. every clean prediction wrong upstream) is an empty result, not an error."""
    x = torch.rand(0, 3, SIZE, SIZE)
    res = run_autoattack(model, x, torch.zeros(0, dtype=torch.long), eps=AA_EPS)
    assert res.n == 0 and res.robust.shape == (0,) and res.broken_by == []
    assert set(res.per_attack) == {"apgd-ce", "apgd-t", "fab-t", "square"}


def test_autoattack_usage_errors(model: nn.Module, data: Data) -> None:
    x, y = data[0][:2], data[1][:2]
    with pytest.raises(UsageError, match="eps"):
        run_autoattack(model, x, y, eps=0.0)
    with pytest.raises(UsageError, match="did you mean 'apgd-ce'"):
        run_autoattack(model, x, y, eps=EPS, attacks=["apgd_ce"])
    with pytest.raises(UsageError, match="version"):
        run_autoattack(model, x, y, eps=EPS, version="plus", attacks=["apgd-ce"])
    with pytest.raises(UsageError, match="custom"):
        run_autoattack(model, x, y, eps=EPS, version="custom")
    with pytest.raises(UsageError, match="norm"):
        run_autoattack(model, x, y, eps=EPS, norm="Linfinity")
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        run_autoattack(model, x * 255, y, eps=EPS)


def test_autoattack_fewer_classes_and_warnings(data: Data) -> None:
    """A 5-class model: target counts are capped; a softmax-output model triggers the library's warning."""
    lin = nn.Sequential(Linear(5), nn.Softmax(dim=1)).eval()
    x = data[0][:4]
    with torch.no_grad():
        y = lin(x).argmax(1)
    res = run_autoattack(lin, x, y, eps=1 / 255, attacks=["apgd-ce", "apgd-t"])
    assert any("probability distribution" in m for m in res.messages)
    _check_aa_result(res, x, 1 / 255)
