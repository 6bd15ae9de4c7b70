"""Attack names parsed once into :class:`AttackSpec`: ``clean``, ``fgsm``, ``pgdK`` / ``pgdKrR``, ``cw`` / ``cwK``,
``autoattack`` (the standard version of Croce & Hein 2020), ``square`` and ``aa-custom:A+B``; and the checks a
suite passes before any model call (the seed, pyautoattack for AutoAttack-type attacks)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rkd.errors import UsageError

_SPEC = re.compile(r"^(clean|fgsm|pgd(\d+)(?:r(\d+))?|cw(\d+)?|autoattack|square|aa-custom:([a-z+-]+))$")
AA_SUBATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
#: AutoAttack's standard version (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square.
AA_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
#: The most steps (``pgdK``, ``cwK``) and restarts (``pgdKrR``) an attack name may ask for: more is a typo, not an
#: evaluation (AutoAttack's APGD takes 100 steps; the literature's strongest PGD runs take 1,000 or so).
MAX_STEPS = 10_000
MAX_RESTARTS = 100
#: Seeds are what torch's generators take: integers in [0, 2**63).
MAX_SEED = 2**63 - 1
#: The attack kinds that take the model's input gradient step by step (FGSM, PGD, CW-inf; one runner).
GRADIENT_KINDS = ("fgsm", "pgd", "cw")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite, parsed from its name: ``clean``, ``fgsm``, ``pgd20``, ``pgd20r5`` (5 random
    restarts), ``cw`` (= ``cw30``), ``autoattack`` (standard), ``square`` (AutoAttack's Square, 5000 queries,
    no gradients) or ``aa-custom:apgd-ce+square`` (a named subset of AutoAttack's attacks)."""

    name: str
    kind: str
    steps: int = 0
    subattacks: tuple[str, ...] = ()
    restarts: int = 1

    @property
    def uses_gradients(self) -> bool:
        """False for attacks that only query the model's outputs (Square)."""
        return not (self.kind == "autoattack" and set(self.subattacks) <= {"square"})


def _steps(name: str, digits: str) -> int:
    """The step count in an attack name, refused above :data:`MAX_STEPS` (a count of steps, not a typo'd run)."""
    if len(digits) > len(str(MAX_STEPS)) or int(digits) > MAX_STEPS:
        raise UsageError(f"attack '{name}' asks for {int(digits)} steps; at most {MAX_STEPS:,}")
    steps = int(digits)
    if steps == 0:
        raise UsageError(f"attack '{name}' needs at least one step")
    return steps


def _pgd(name: str, m: re.Match[str]) -> AttackSpec:
    restarts = int(m.group(3) or 1)
    if restarts < 1:
        raise UsageError(f"attack '{name}' needs at least one restart")
    if restarts > MAX_RESTARTS:
        raise UsageError(f"attack '{name}' asks for {restarts} restarts; at most {MAX_RESTARTS}")
    return AttackSpec(name, "pgd", _steps(name, m.group(2)), restarts=restarts)


def _aa_custom(name: str, m: re.Match[str]) -> AttackSpec:
    subs = tuple(s for s in m.group(5).split("+") if s)
    bad = [s for s in subs if s not in AA_SUBATTACKS]
    if bad or not subs:
        raise UsageError(f"unknown AutoAttack attack {bad or subs}: choose from {', '.join(AA_SUBATTACKS)}")
    twice = sorted({s for s in subs if subs.count(s) > 1})
    if twice:
        raise UsageError(f"attack '{name}' names {', '.join(twice)} twice: list each AutoAttack attack once")
    return AttackSpec(name, "autoattack", subattacks=subs)


#: One parser per name form (the first matching prefix wins).
_PARSERS: tuple[tuple[str, Callable[[str, re.Match[str]], AttackSpec]], ...] = (
    ("fgsm", lambda name, m: AttackSpec(name, "fgsm", 1)),
    ("pgd", _pgd),
    ("cw", lambda name, m: AttackSpec(name, "cw", _steps(name, m.group(4) or "30"))),
    ("autoattack", lambda name, m: AttackSpec(name, "autoattack", subattacks=AA_STANDARD)),
    ("square", lambda name, m: AttackSpec(name, "autoattack", subattacks=("square",))),
    ("aa-custom:", _aa_custom),
)


def parse_attacks(text: str | list[str]) -> list[AttackSpec]:
    """Parse ``"clean,fgsm,pgd20,cw,autoattack"``; ``clean`` is always evaluated (added when missing)."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise UsageError("the attack list is empty: name at least one, e.g. pgd20,autoattack (or clean for clean "
                         "accuracy alone)")
    specs: list[AttackSpec] = [AttackSpec("clean", "clean")]
    for name in names:
        m = _SPEC.match(name)
        if not m:
            raise UsageError(
                f"unknown attack '{name}': use clean, fgsm, pgdK or pgdKrR (e.g. pgd20, pgd50r5), cw or cwK, "
                "autoattack, square, or aa-custom:apgd-ce+square"
            )
        if name == "clean":
            continue
        parse = next(fn for prefix, fn in _PARSERS if name.startswith(prefix))
        spec = parse(name, m)
        if spec not in specs:
            specs.append(spec)
    return specs


def check_seed(seed: object, option: str = "--seed") -> int:
    """``seed`` as an integer in [0, 2**63) (what every attack, AutoAttack included, can take), else a UsageError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{option} must be an integer in [0, 2**63), got {seed!r}")
    return seed


def check_suite(specs: Sequence[AttackSpec], *, seed: object) -> None:
    """What would otherwise fail only once the attacks run, checked before any model call: the seed, and
    pyautoattack for AutoAttack-type attacks (:class:`~rkd.errors.MissingDependencyError`, exit 3)."""
    check_seed(seed)
    kinds = [s.name for s in specs if s.kind == "autoattack"]
    if kinds:
        from rkd.attacks.autoattack import require_pyautoattack

        require_pyautoattack(f"attack '{kinds[0]}'")
