"""Medformer: Input Adaptformer -> transformer body -> Output Adaptformer with task heads.

The Input Adaptformer turns any 2D or 3D image into the same number of canonical tokens:
a learned latent array plus the sample's dim, modality and body-part latents query the patch
tokens by cross-attention (Perceiver style). Datasets add latents and heads only; the
backbone parameters stay the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from ..data.batch import Inputs
from ..data.domains import DatasetInfo
from .attention import Block
from .heads import head_width


@dataclass
class MedformerConfig:
    hidden_dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    patch_size: int = 4
    latent_dim: int = 64
    num_latent_tokens: int = 32
    image_size_2d: int = 28
    image_size_3d: int = 28
    task_tokens: int = 1
    drop_path: float = 0.0
    dropout: float = 0.0


SIZES: dict[str, MedformerConfig] = {
    "medformer_small": MedformerConfig(),
    "medformer_large": MedformerConfig(
        hidden_dim=512, depth=6, heads=8, mlp_ratio=4.0, patch_size=16, latent_dim=256,
        num_latent_tokens=512, image_size_2d=224, image_size_3d=64,
    ),
}


def _param(*shape: int) -> nn.Parameter:
    p = nn.Parameter(torch.zeros(*shape))
    trunc_normal_(p, std=0.02)
    return p


class InputAdaptformer(nn.Module):
    """Patchify (2D or 3D) and cross-attend domain-conditioned latent queries to the patches."""

    def __init__(self, cfg: MedformerConfig):
        super().__init__()
        p, d = cfg.patch_size, cfg.hidden_dim
        self.patch_size = p
        self.grid_2d = cfg.image_size_2d // p
        self.grid_3d = cfg.image_size_3d // p
        self.patch_2d = nn.Conv2d(3, d, p, p)
        self.patch_3d = nn.Conv3d(1, d, p, p)
        self.pos_2d = _param(1, self.grid_2d**2, d)
        self.pos_3d = _param(1, self.grid_3d**3, d)
        self.latents = _param(cfg.num_latent_tokens, cfg.latent_dim)
        self.dim_latents = nn.ParameterDict({"2d": _param(cfg.latent_dim), "3d": _param(cfg.latent_dim)})
        self.modality_latents = nn.ParameterDict()
        self.body_part_latents = nn.ParameterDict()
        self.cross = Block(cfg.latent_dim, cfg.heads, cfg.mlp_ratio, context_dim=d, dropout=cfg.dropout)
        self.proj = nn.Linear(cfg.latent_dim, d)
        self.latent_dim = cfg.latent_dim
        self.num_tokens = cfg.num_latent_tokens + 3

    def add_domain(self, modality: str, body_part: str) -> None:
        if modality not in self.modality_latents:
            self.modality_latents[modality] = _param(self.latent_dim)
        if body_part not in self.body_part_latents:
            self.body_part_latents[body_part] = _param(self.latent_dim)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[b, C, H, W] or [b, C, D, H, W] -> patch tokens with position embeddings [b, T, d]."""
        conv = self.patch_2d if images.ndim == 4 else self.patch_3d
        weight = conv.weight
        if images.shape[1] != weight.shape[1]:
            if images.shape[1] != 1:
                raise ValueError(
                    f"{images.ndim - 2}D input has {images.shape[1]} channels; "
                    f"expected {weight.shape[1]} or 1"
                )
            weight = weight.sum(1, keepdim=True)  # a gray image acts as a replicated RGB one
        conv_fn = F.conv2d if images.ndim == 4 else F.conv3d
        x = conv_fn(images, weight, conv.bias, stride=self.patch_size)
        grid = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        return x + self._pos_embed(grid, images.ndim == 4)

    def _pos_embed(self, grid: tuple[int, ...], is_2d: bool) -> torch.Tensor:
        if is_2d:
            if tuple(grid) == (self.grid_2d,) * 2:
                return self.pos_2d
            return resample_abs_pos_embed(self.pos_2d, list(grid), [self.grid_2d] * 2, num_prefix_tokens=0)
        if tuple(grid) == (self.grid_3d,) * 3:
            return self.pos_3d
        g, d = self.grid_3d, self.pos_3d.shape[-1]
        pos = self.pos_3d.reshape(1, g, g, g, d).permute(0, 4, 1, 2, 3)
        pos = F.interpolate(pos, size=tuple(grid), mode="trilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def queries(self, inputs: Inputs) -> torch.Tensor:
        """[B, num_latent_tokens + 3, latent_dim]: latent array, then dim/modality/body-part latents."""
        def lookup(table: nn.ParameterDict, names: list[str], what: str) -> torch.Tensor:
            missing = sorted(set(names) - set(table.keys()))
            if missing:
                raise KeyError(
                    f"model has no {what} latent for {missing}; known: {sorted(table.keys())}. "
                    "Build the model with these datasets (model.add_dataset)."
                )
            vocab = list(table.keys())
            stacked = torch.stack([table[k] for k in vocab])
            return stacked[torch.tensor([vocab.index(n) for n in names], device=stacked.device)]

        b = len(inputs)
        domain = torch.stack(
            [
                lookup(self.dim_latents, inputs.dim, "dim"),
                lookup(self.modality_latents, inputs.modality, "modality"),
                lookup(self.body_part_latents, inputs.body_part, "body-part"),
            ],
            dim=1,
        )
        return torch.cat([self.latents.expand(b, -1, -1), domain], dim=1)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        queries = self.queries(inputs)
        out = None
        for images, rows in inputs.groups:
            z = self.proj(self.cross(queries[rows], self.patch_tokens(images)))
            if out is None:
                out = z.new_zeros(len(inputs), *z.shape[1:])
            out = out.index_copy(0, rows, z)
        return out


class OutputAdaptformer(nn.Module):
    """Per-task latent tokens cross-attend the body tokens; one head per task."""

    def __init__(self, cfg: MedformerConfig):
        super().__init__()
        self.cfg = cfg
        self.cross = Block(cfg.hidden_dim, cfg.heads, cfg.mlp_ratio, context_dim=cfg.hidden_dim, dropout=cfg.dropout)
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.task_latents = nn.ParameterDict()
        self.heads = nn.ModuleDict()

    def add_task(self, name: str, n_outputs: int) -> None:
        if name in self.heads:
            return
        self.task_latents[name] = _param(self.cfg.task_tokens, self.cfg.hidden_dim)
        head = nn.Linear(self.cfg.hidden_dim, n_outputs)
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        self.heads[name] = head

    def task_features(self, tokens: torch.Tensor, task: str) -> torch.Tensor:
        queries = self.task_latents[task].expand(tokens.shape[0], -1, -1)
        return self.norm(self.cross(queries, tokens)).mean(1)

    def forward(self, tokens: torch.Tensor, inputs: Inputs) -> dict[str, torch.Tensor]:
        out = {}
        for task in dict.fromkeys(inputs.task):
            if task not in self.heads:
                raise KeyError(f"model has no head for task {task!r}; heads: {sorted(self.heads)}")
            rows = inputs.rows_of_task(task).to(tokens.device)
            out[task] = self.heads[task](self.task_features(tokens[rows], task))
        return out


class Medformer(nn.Module):
    """The shared backbone with domain latents and task heads (see module docstring)."""

    def __init__(self, cfg: MedformerConfig, datasets: list[DatasetInfo] = ()):
        super().__init__()
        self.cfg = cfg
        self.input_adapt = InputAdaptformer(cfg)
        dpr = [x.item() for x in torch.linspace(0, cfg.drop_path, cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.hidden_dim, cfg.heads, cfg.mlp_ratio, drop_path=dpr[i], dropout=cfg.dropout)
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.output_adapt = OutputAdaptformer(cfg)
        self.apply(self._init_weights)
        self._init_cross_attention()
        for info in datasets:
            self.add_dataset(info)

    @property
    def embed_dim(self) -> int:
        return self.cfg.hidden_dim

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _init_cross_attention(self) -> None:
        """Xavier q/kv in the adaptformers' cross-attention, unit-scale latent array.

        With ViT's std-0.02 init the latent queries attend almost uniformly, every latent gets
        the mean patch embedding, and training stalls at the class prior (measured on
        PneumoniaMNIST: loss 0.60 -> 0.53 in 150 steps vs 0.59 -> 0.20 with this init).
        """
        for block in (self.input_adapt.cross, self.output_adapt.cross):
            nn.init.xavier_uniform_(block.attn.q.weight)
            nn.init.xavier_uniform_(block.attn.kv.weight)
        nn.init.normal_(self.input_adapt.latents, std=1.0)

    def add_dataset(self, info: DatasetInfo, task: str | None = None) -> None:
        """Add the dataset's modality/body-part latents and its task head (if not present)."""
        self.input_adapt.add_domain(info.modality, info.body_part)
        self.add_task(task or info.flag, head_width(info.task, info.n_classes))

    def add_task(self, name: str, n_outputs: int) -> None:
        self.output_adapt.add_task(name, n_outputs)

    def backbone_parameter_names(self) -> list[str]:
        """Parameters shared by all datasets (everything but domain latents, task latents, heads)."""
        per_dataset = ("modality_latents.", "body_part_latents.", "task_latents.", "heads.")
        return [n for n, _ in self.named_parameters() if not any(s in n for s in per_dataset)]

    def tokens(self, inputs: Inputs) -> torch.Tensor:
        """Body tokens [B, N, hidden] after the Input Adaptformer and the transformer blocks."""
        x = self.input_adapt(inputs)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def encode(self, inputs: Inputs) -> torch.Tensor:
        """The shared representation [B, hidden]: mean of the body tokens."""
        return self.tokens(inputs).mean(1)

    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """Logits per task, for the rows of that task in ascending order."""
        return self.output_adapt(self.tokens(inputs), inputs)

    def encode_and_classify(self, inputs: Inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`encode` and `forward` from one pass through the body (SSL + pseudo-label runs)."""
        tokens = self.tokens(inputs)
        return tokens.mean(1), self.output_adapt(tokens, inputs)

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def medformer_config(name: str, **overrides) -> MedformerConfig:
    if name not in SIZES:
        raise ValueError(f"unknown Medformer size {name!r}; choose from {sorted(SIZES)}")
    cfg = MedformerConfig(**{**asdict(SIZES[name]), **overrides})
    for size in (cfg.image_size_2d, cfg.image_size_3d):
        if size % cfg.patch_size:
            raise ValueError(f"image size {size} is not a multiple of patch_size {cfg.patch_size}")
    return cfg


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

