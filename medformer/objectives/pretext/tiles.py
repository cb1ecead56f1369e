"""Images as tiles and back, for 2D [b, C, H, W] and 3D [b, C, D, H, W] tensors of equal sides.

Tiles are numbered row-major over the tile grid, the order of a patchify conv's flattened output,
so tile t of `split_tiles(x, S // patch_size)` is the image region of patch token t.
"""

from __future__ import annotations

from torch import Tensor


def split_tiles(x: Tensor, grid: int) -> Tensor:
    """[b, C, *S] -> [b, grid^n, C, *(S / grid)] (n spatial dims, each divisible by grid)."""
    b, c, *sides = x.shape
    n = len(sides)
    t = [s // grid for s in sides]
    x = x.reshape(b, c, *[v for side in t for v in (grid, side)])
    order = [0, *(2 + 2 * i for i in range(n)), 1, *(3 + 2 * i for i in range(n))]
    return x.permute(order).reshape(b, grid**n, c, *t)


def merge_tiles(tiles: Tensor, grid: int) -> Tensor:
    """The inverse of split_tiles: [b, grid^n, C, *t] -> [b, C, *(grid * t)]."""
    b, _, c, *t = tiles.shape
    n = len(t)
    x = tiles.reshape(b, *[grid] * n, c, *t)
    order = [0, n + 1, *(v for i in range(n) for v in (1 + i, n + 2 + i))]
    return x.permute(order).reshape(b, c, *(grid * side for side in t))


def patch_pixels(images: Tensor, patch_size: int) -> Tensor:
    """[b, C, *S] -> [b, T, C * patch_size^n]: each patch token's pixels."""
    return split_tiles(images, images.shape[-1] // patch_size).flatten(2)


def token_mask_to_pixels(mask: Tensor, grid: int, patch_size: int, n_dims: int) -> Tensor:
    """[b, grid^n] per-token flags -> [b, 1, *S] per-pixel flags (S = grid * patch_size)."""
    x = mask.reshape(mask.shape[0], 1, *[grid] * n_dims)
    for axis in range(2, 2 + n_dims):
        x = x.repeat_interleave(patch_size, dim=axis)
    return x


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [b, T, ...] gathered along dim 1 by index [b, K] -> [b, K, ...]."""
    return x.gather(1, index.reshape(*index.shape, *[1] * (x.ndim - 2)).expand(-1, -1, *x.shape[2:]))

