"""Pixel-reconstruction pretext tasks on the Medformer: masked modelling (MAE, He et al. 2022) and
context restoration (Models Genesis, Zhou et al. 2019), with one light decoder design.

Masked modelling zeroes the masked patches' pixels before the stem (so no convolution sees across
into them) and leaves only the visible patch tokens in the Input Adaptformer's context; the
decoder reconstructs the masked patches. Restoration corrupts boxes of the image (noise, or pixels
shuffled within each patch) and the decoder restores the whole image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config.pretrain import InpaintingConfig, MAEConfig
from ...data.batch import Inputs
from ...data.transforms.sample_random import SampleRandom
from ...models.attention import Block
from .base import PretextTerm, full_precision, require_cube, require_medformer, with_groups
from .tiles import merge_tiles, patch_pixels, split_tiles, token_mask_to_pixels


class PixelDecoder(nn.Module):
    """Perceiver IO decoder: one query per patch (the encoder's position embedding, projected)
    cross-attends the body tokens; a linear layer per dim gives the patch's pixels."""

    def __init__(self, model: nn.Module, width: int | None, depth: int):
        super().__init__()
        cfg = model.cfg
        width = width or cfg.hidden_dim
        if width % cfg.heads:
            raise ValueError(f"decoder_width {width} must be a multiple of the model's heads ({cfg.heads})")
        p = model.input_adapt.patch_size  # pixels per token side, by dim
        self.context = nn.Linear(cfg.hidden_dim, width)
        self.query = nn.Linear(cfg.hidden_dim, width)
        self.blocks = nn.ModuleList(Block(width, cfg.heads, cfg.mlp_ratio, context_dim=width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.pixels = nn.ModuleDict({"2d": nn.Linear(width, 3 * p["2d"] ** 2), "3d": nn.Linear(width, p["3d"] ** 3)})

    def forward(self, model: nn.Module, tokens: Tensor, dim: str, grid: int) -> Tensor:
        """Body tokens [b, N, hidden] -> predicted pixels [b, grid^n, C * p^n] of every patch."""
        n_dims = 2 if dim == "2d" else 3
        position = model.input_adapt.position_embedding((grid,) * n_dims, dim == "2d")
        queries = self.query(position).expand(len(tokens), -1, -1)
        context = self.context(tokens)
        for block in self.blocks:
            queries = block(queries, context)
        return self.pixels[dim](self.norm(queries))


def pixel_targets(images: Tensor, dim: str, patch_size: int, normalise: bool) -> Tensor:
    """[b, T, C * p^n] target pixels per patch (gray images as RGB for the 2D decoder)."""
    if dim == "2d" and images.shape[1] == 1:
        images = images.expand(-1, 3, *images.shape[2:])
    target = full_precision(patch_pixels(images, patch_size))
    if normalise:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


class ReconstructionTerm(PretextTerm):
    """A pixel decoder over the Medformer's body tokens, loss = per-patch MSE averaged per sample."""

    needs_tokens = True

    def __init__(self, model: nn.Module, width: int | None, depth: int):
        super().__init__()
        require_medformer(model, self.name)
        self.patch_size: dict[str, int] = dict(model.input_adapt.patch_size)  # by dim
        self.decoder = PixelDecoder(model, width, depth)

    def reconstruct(self, model: nn.Module, inputs: Inputs, keep: dict[str, Tensor] | None = None) -> Tensor:
        tokens = model.tokens(inputs, keep=keep)
        self.last_embedding = tokens.mean(1).detach()
        return tokens


class MaskedModelling(ReconstructionTerm):
    name = "mae"
    loss_name = "mae/mse"

    def __init__(self, cfg: MAEConfig, model: nn.Module):
        super().__init__(model, cfg.decoder_width, cfg.decoder_depth)
        self.mask_ratio = cfg.mask_ratio
        self.norm_pix = cfg.norm_pix

    def mask(self, images: Tensor, rng: SampleRandom) -> tuple[Tensor, Tensor, Tensor]:
        """(images with masked patches zeroed, visible token indices [b, K], token mask [b, T] True = masked)."""
        n_dims = images.ndim - 2
        p = self.patch_size["2d" if n_dims == 2 else "3d"]
        grid = images.shape[-1] // p
        n_tokens = grid**n_dims
        n_keep = min(n_tokens - 1, max(1, round(n_tokens * (1 - self.mask_ratio))))
        visible = rng.uniform(n_tokens).argsort(1)[:, :n_keep]
        masked = torch.ones(len(images), n_tokens, dtype=torch.bool, device=images.device)
        masked.scatter_(1, visible, False)
        hidden = token_mask_to_pixels(masked, grid, p, n_dims)
        return images.masked_fill(hidden, 0.0), visible, masked

    def forward(self, model: nn.Module, inputs: Inputs, seeds: Tensor) -> Tensor:
        groups, keep, plans = [], {}, []
        for dim, images, rows, rng in self.groups(inputs, seeds):
            require_cube(images, self.name)
            masked_images, keep[dim], masked = self.mask(images, rng)
            groups.append((masked_images, rows))
            plans.append((dim, images, rows, masked))
        tokens = self.reconstruct(model, with_groups(inputs, groups), keep)
        losses = []
        for dim, images, rows, masked in plans:
            grid = images.shape[-1] // self.patch_size[dim]
            predicted = full_precision(self.decoder(model, tokens[rows.to(tokens.device)], dim, grid))
            error = (predicted - pixel_targets(images, dim, self.patch_size[dim], self.norm_pix)).pow(2).mean(-1)
            losses.append((error * masked).sum(1) / masked.sum(1))
        return torch.cat(losses).mean()


class ContextRestoration(ReconstructionTerm):
    name = "inpainting"
    loss_name = "inpainting/mse"

    def __init__(self, cfg: InpaintingConfig, model: nn.Module):
        super().__init__(model, cfg.decoder_width, cfg.decoder_depth)
        self.cfg = cfg

    def boxes(self, images: Tensor, rng: SampleRandom) -> Tensor:
        """[b, 1, *S] True inside any of cfg.boxes random boxes (sides box_min..box_max of the image's)."""
        cfg, sides = self.cfg, images.shape[2:]
        n_dims = len(sides)
        inside = torch.zeros(len(images), 1, *sides, dtype=torch.bool, device=images.device)
        for _ in range(cfg.boxes):
            size = rng.uniform(n_dims, cfg.box_min, cfg.box_max)
            start = rng.uniform(n_dims) * (1 - size)
            box = torch.ones_like(inside)
            for axis, side in enumerate(sides):
                coord = (torch.arange(side, device=images.device) + 0.5) / side
                shape = [1] * (n_dims + 2)
                shape[2 + axis] = side
                coord = coord.reshape(shape)
                lo, hi = (t[:, axis].reshape(-1, *[1] * (n_dims + 1)) for t in (start, start + size))
                box &= (coord >= lo) & (coord < hi)
            inside |= box
        return inside

    def shuffled(self, images: Tensor, rng: SampleRandom) -> Tensor:
        """Local pixel shuffling: the pixels of every patch permuted (one permutation per patch)."""
        grid = images.shape[-1] // self.patch_size["2d" if images.ndim == 4 else "3d"]
        tiles = split_tiles(images, grid)  # [b, T, C, *p]
        b, t, c, *p = tiles.shape
        flat = tiles.flatten(3)
        order = rng.uniform(t * flat.shape[-1]).reshape(b, t, 1, -1).argsort(-1).expand(-1, -1, c, -1)
        return merge_tiles(flat.gather(3, order).reshape(b, t, c, *p), grid)

    def corrupt(self, images: Tensor, rng: SampleRandom) -> Tensor:
        inside = self.boxes(images, rng)
        noise = rng.normal(tuple(images.shape[1:])).to(images.dtype)
        shuffle = rng.coin(0.5) if self.cfg.corruption == "both" else torch.full(
            (len(images),), self.cfg.corruption == "shuffle", device=images.device)
        filled = torch.where(shuffle.reshape(-1, *[1] * (images.ndim - 1)), self.shuffled(images, rng), noise)
        return torch.where(inside, filled, images)

    def forward(self, model: nn.Module, inputs: Inputs, seeds: Tensor) -> Tensor:
        groups, plans = [], []
        for dim, images, rows, rng in self.groups(inputs, seeds):
            require_cube(images, self.name)
            groups.append((self.corrupt(images, rng), rows))
            plans.append((dim, images, rows))
        tokens = self.reconstruct(model, with_groups(inputs, groups))
        losses = []
        for dim, images, rows in plans:
            grid = images.shape[-1] // self.patch_size[dim]
            predicted = full_precision(self.decoder(model, tokens[rows.to(tokens.device)], dim, grid))
            losses.append((predicted - pixel_targets(images, dim, self.patch_size[dim], False)).pow(2).mean((1, 2)))
        return torch.cat(losses).mean()
