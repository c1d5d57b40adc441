"""Scoring predictions against MD: the mean absolute error over windows, in rho/rho_bulk and in
water-O number density (Å^-3: the error times each window's rho_bulk, the paper's unit).

The one scoring path of training's validation and of the evaluation: per-window absolute
errors (or per-voxel noise floors, ``conventions.noise_floor_map``) are pooled over the voxels
each window's mask selects (all by default), so every voxel counts once whatever its window.
Sums rather than means are kept (:class:`ErrorSums`) so that processes can add theirs up.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

__all__ = ["ErrorSums", "score_windows"]


@dataclasses.dataclass
class ErrorSums:
    """Running sums of absolute errors: ``abs`` (rho/rho_bulk), ``abs_A3`` (Å^-3), ``voxels``."""

    abs: float = 0.0
    abs_A3: float = 0.0
    voxels: int = 0

    def add(self, errors: np.ndarray, rho_bulk: float, mask: np.ndarray | None = None) -> None:
        """One window: ``errors`` (X, Y, Z) in rho/rho_bulk, its ``rho_bulk`` (Å^-3), the voxels
        that count (``mask``, all by default)."""
        a3 = errors * rho_bulk
        if mask is None:
            self.abs += float(errors.sum())
            self.abs_A3 += float(a3.sum())
            self.voxels += errors.size
        else:
            self.abs += float(errors[mask].sum())
            self.abs_A3 += float(a3[mask].sum())
            self.voxels += int(mask.sum())

    def as_list(self) -> list[float]:
        return [self.abs, self.abs_A3, float(self.voxels)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> "ErrorSums":
        return cls(float(values[0]), float(values[1]), int(values[2]))

    def result(self) -> dict:
        """``{"mae": rho/rho_bulk, "mae_A3": Å^-3}`` (0 over no voxels)."""
        n = max(self.voxels, 1)
        return {"mae": self.abs / n, "mae_A3": self.abs_A3 / n}


def score_windows(errors: Sequence[np.ndarray], rho_bulk: Sequence[float], masks: Sequence | None = None) -> dict:
    """MAE of per-window absolute errors pooled over the masked voxels: ``{"mae", "mae_A3"}``."""
    sums = ErrorSums()
    for w, e in enumerate(errors):
        sums.add(e, rho_bulk[w], None if masks is None else masks[w])
    return sums.result()
