"""Training data: integer images as float tensors in input units, deterministic per-epoch
shuffling (so a resumed run sees the same batches) and pad-and-crop augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["epoch_batches", "pad_and_crop"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order and augmentation: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 7919 + 17)


def pad_and_crop(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translation of each image (N×C×H×W) by up to ``shift`` pixels in each
    direction: zero padding by ``shift``, then a crop of the original size. Pixels stay integers
    in their range."""
    if shift <= 0 or x.dim() != 4:
        return x
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    p = F.pad(x, (shift, shift, shift, shift)).permute(0, 2, 3, 1)  # N×H'×W'×C
    rows = dy.view(n, 1, 1) + torch.arange(h).view(1, h, 1)  # N×H×1
    cols = dx.view(n, 1, 1) + torch.arange(w).view(1, 1, w)  # N×1×W
    b = torch.arange(n).view(n, 1, 1)
    return p[b, rows, cols].permute(0, 3, 1, 2).contiguous()


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int
) -> tuple[list[torch.Tensor], torch.Generator]:
    """The index batches of one epoch (a seeded permutation; the last batch may be smaller) and
    the generator for the epoch's augmentation."""
    gen = epoch_generator(seed, epoch)
    perm = torch.randperm(n, generator=gen)
    return list(perm.split(batch_size)), gen
