"""Seeded, disjoint subject splits (pretrain / finetune / val / test).

The requested sizes are subject **counts**; the paper's are pretrain 80, finetune 10, val 5, test 10
(:data:`PAPER_SPLITS`, 105 subjects). Rule, for a cohort of N subjects and requested counts summing to T:

- N >= T: every split gets exactly its count; the N - T subjects left over are recorded under
  ``"unused"`` (never trained on or evaluated, but listed so nothing is dropped silently).
- N < T: sizes are scaled by N / T, floored, every requested (non-zero) split keeps at least 1
  subject, and the subjects still unassigned go one at a time to the split with the largest
  rounding remainder (ties: the order given); if the minimums overshoot N, the largest split gives
  subjects back. N must be at least the number of non-zero splits.

Assignment: the sorted subject ids are permuted with ``numpy.random.default_rng(seed)`` and dealt to
the splits in the order given, so the result depends only on (ids, sizes, seed).
"""
from __future__ import annotations

import math

import numpy as np

from .config import ConfigError

PAPER_SPLITS: dict[str, int] = {"pretrain": 80, "finetune": 10, "val": 5, "test": 10}
UNUSED = "unused"


def parse_splits(text: str) -> dict[str, int]:
    """``"pretrain=80,finetune=10,val=5,test=10"`` -> dict; raise :class:`ConfigError` saying the format."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise ConfigError(f"--splits {text!r}: write NAME=COUNT pairs, e.g. pretrain=80,finetune=10,val=5,test=10")
        out[name.strip()] = int(value)
    check_sizes(out)
    return out


def check_sizes(sizes: dict[str, int]) -> None:
    """Raise :class:`ConfigError` naming the problem unless ``sizes`` is a usable split request."""
    if not sizes or not any(v > 0 for v in sizes.values()):
        raise ConfigError(f"splits {sizes}: give at least one split a positive count, e.g. pretrain=80,finetune=10,val=5,test=10")
    if UNUSED in sizes:
        raise ConfigError(f"split name {UNUSED!r} is reserved for left-over subjects; choose another name")
    if any(v < 0 for v in sizes.values()):
        raise ConfigError(f"splits {sizes}: counts must be >= 0")


def split_sizes(n: int, sizes: dict[str, int] = PAPER_SPLITS) -> dict[str, int]:
    """How many of ``n`` subjects each split gets (see the module docstring for the rule)."""
    check_sizes(sizes)
    total = sum(sizes.values())
    wanted = [k for k, v in sizes.items() if v > 0]
    if n >= total:
        return dict(sizes)
    if n < len(wanted):
        raise ConfigError(
            f"{n} subject(s) cannot fill {len(wanted)} non-empty splits {wanted}: "
            f"add subjects or request fewer splits (--splits)"
        )
    scaled = {k: sizes[k] * n / total for k in sizes}
    alloc = {k: (max(1, math.floor(scaled[k])) if sizes[k] > 0 else 0) for k in sizes}
    left = n - sum(alloc.values())
    while left > 0:
        k = max(wanted, key=lambda k: (scaled[k] - alloc[k], -wanted.index(k)))
        alloc[k] += 1
        left -= 1
    while left < 0:
        k = max(wanted, key=lambda k: (alloc[k], -wanted.index(k)))
        alloc[k] -= 1
        left += 1
    return alloc


def make_splits(sids, sizes: dict[str, int] = PAPER_SPLITS, seed: int = 0) -> dict[str, list[str]]:
    """Deal the subject ids to disjoint splits (each list sorted); ``"unused"`` holds any left over."""
    ids = sorted(set(sids))
    if len(ids) != len(list(sids)):
        raise ValueError("duplicate subject ids given to make_splits")
    counts = split_sizes(len(ids), sizes)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    out, start = {}, 0
    for name, count in counts.items():
        out[name] = sorted(order[start:start + count])
        start += count
    if start < len(ids):
        out[UNUSED] = sorted(order[start:])
    return out
