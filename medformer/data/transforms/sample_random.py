"""Per-sample random streams for batched augmentation: a counter-based hash (splitmix64), vectorised.

A sample's draws depend only on its own seed and how many draws came before, never on the batch it
is in, the process or the device. `sample_seeds(seed, epoch, salt, index)` makes the seeds, so the
views of sample i at epoch e under seed s are a pure function of (s, e, i): 1-process, 2-process
and resumed runs see the same ones.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 value with the same bits."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_C1, _C2, _GOLDEN = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(0x9E3779B97F4A7C15)


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (64-bit wrap-around)."""
    x &= _MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _srl(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on an int64 tensor, bit for bit as `_mix_int` (wrap-around products)."""
    x = x ^ _srl(x, 30)
    x = x * _C1
    x = x ^ _srl(x, 27)
    x = x * _C2
    return x ^ _srl(x, 31)


def sample_seeds(seed: int, epoch: int, salt: int, index: Tensor) -> Tensor:
    """int64 seed of each sample `index` [B] (its row in its dataset) at (seed, epoch, dataset salt)."""
    key = _signed(_mix_int(_mix_int(_mix_int(seed) ^ epoch) ^ salt))
    return mix64(index.long() * _GOLDEN + key)


class SampleRandom:
    """Draws for a batch, one independent stream per sample; every call advances all streams alike."""

    def __init__(self, seeds: Tensor):
        self.seeds = seeds.long()
        self.draws = 0

    @property
    def batch(self) -> int:
        return self.seeds.shape[0]

    def fork(self, k: int) -> SampleRandom:
        """An independent set of streams (view k of the same samples)."""
        return SampleRandom(mix64(self.seeds ^ _signed(_mix_int(0xF00D + k))))

    def _bits(self, n: int) -> Tensor:
        self.draws += 1
        stream = mix64(self.seeds ^ _signed(_mix_int(self.draws)))
        j = torch.arange(n, device=self.seeds.device, dtype=torch.long) * _GOLDEN
        return mix64(stream[:, None] + j)

    def uniform(self, n: int = 1, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        """[B, n] floats uniform in [lo, hi) (24 random bits each)."""
        u = _srl(self._bits(n), 40).float() * 2.0**-24
        return lo + (hi - lo) * u

    def coin(self, p: float) -> Tensor:
        """[B] bools, each True with probability p (a draw is made even for p of 0 or 1)."""
        return self.uniform(1)[:, 0] < p

    def randint(self, high: int, n: int = 1) -> Tensor:
        """[B, n] integers in [0, high)."""
        return (self.uniform(n) * high).long().clamp_(max=high - 1)

    def sign(self) -> Tensor:
        """[B] of -1.0 or 1.0."""
        return torch.where(self.coin(0.5), -1.0, 1.0)

    def normal(self, shape: tuple[int, ...]) -> Tensor:
        """[B, *shape] standard normal (Box-Muller)."""
        n = math.prod(shape)
        u1 = 1.0 - self.uniform(n)  # (0, 1]: log stays finite
        u2 = self.uniform(n)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
        return z.reshape(self.batch, *shape)
