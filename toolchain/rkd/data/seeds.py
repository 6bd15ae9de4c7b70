"""Deriving independent integer seeds from a base seed and labels (split, epoch, stream)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a deterministic function of ``parts`` (sha256 of their ``repr``s).

    Used so that, for example, epoch 3's permutation and epoch 3's augmentation come from unrelated streams,
    reproducibly across processes and machines (Python's ``hash`` is salted per process; this is not).
    """
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
