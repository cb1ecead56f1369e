"""Medformer: Input Adaptformer -> transformer body -> Output Adaptformer with task heads.

The Input Adaptformer turns any 2D or 3D image into the same number of canonical tokens:
a learned latent array plus the sample's dim, modality and body-part latents query the patch
tokens by cross-attention (Perceiver style). Datasets add latents and heads only; the
backbone parameters stay the same.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ranged
from ..data.batch import Inputs
from ..data.domains import DatasetInfo
from .attention import Block
from .dense_heads import DenseFeatures, EncoderSpec, add_dataset_head
from .domain_norm import DomainBatchNorm
from .stem_calls import dims_only_elsewhere, has_batchnorm, merged_groups, zero_weighted


@dataclass
class MedformerConfig:
    # ranges are checked when model.overrides are loaded (medformer.models.build.check_model)
    hidden_dim: int = ranged(128, ge=1)
    depth: int = ranged(4, ge=1)
    heads: int = ranged(4, ge=1)
    mlp_ratio: float = ranged(2.0, gt=0.0)
    patch_size: int = ranged(4, ge=1)
    latent_dim: int = ranged(64, ge=1)
    num_latent_tokens: int = ranged(32, ge=1)
    image_size_2d: int = ranged(28, ge=1)
    image_size_3d: int = ranged(28, ge=1)
    task_tokens: int = ranged(1, ge=1)
    drop_path: float = ranged(0.0, ge=0.0, lt=1.0)
    dropout: float = ranged(0.0, ge=0.0, lt=1.0)
    # patch: one conv with kernel = stride = patch_size (the thesis); conv: a stack of 3x3
    # stride-2 convs down to the same patch grid (early convolutions help small ViTs)
    stem: Literal["patch", "conv"] = "patch"
    stem_width: int = ranged(32, ge=1)  # channels of the conv stem's first stride-2 layer, doubled at each next one; stride-1 layers get half
    stem_layers: int = ranged(0, ge=0)  # 3x3 convs in the conv stem: log2(patch_size) stride-2 ones after stride-1 ones (0: none)
    # a model built for larger images than this gets stride 2 in the conv stem's stride-1 layers (the
    # same weight shapes): at 64 px an 8x8 grid of 8-pixel tokens, not 16x16 at 0.6x the thesis step
    stem_full_res_max: int = ranged(32, ge=1)
    # the conv stem's normalisation; domain_batch: BatchNorm statistics per modality (multi-task)
    stem_norm: Literal["batch", "domain_batch", "group", "layer", "none"] = "group"
    stem_3d: Literal["patch", "conv"] | None = None  # the stem for volumes (None: as `stem`)
    # image: each image is standardised by its own mean and std before the stem, so that datasets
    # whose intensities differ share the stem's BatchNorm statistics on equal terms (multi-task)
    input_norm: Literal["none", "image"] = "none"


_LARGE = dict(hidden_dim=512, depth=6, heads=8, mlp_ratio=4.0, patch_size=16, latent_dim=256,
              num_latent_tokens=512, image_size_2d=224, image_size_3d=64)
_CONV_STEM = dict(stem="conv", stem_norm="batch")
# conv stem for images, patchify for volumes: on AdrenalMNIST3D the patchify stem learned in every
# seed (AUC 0.80, MCC 0.30 over 3 seeds) where the 3D conv stem mostly predicted the prior, at twice
# its speed (docs/benchmarks.md, "Which backbone")
_BN_STEMS = dict(**_CONV_STEM, stem_3d="patch")
# BatchNorm statistics per modality: a four-task model's BreastMNIST test AUC 0.76 -> 0.86; with
# one modality in the data it is BatchNorm (docs/benchmarks.md, "Which backbone")
_DEFAULT_STEMS = dict(_BN_STEMS, stem_norm="domain_batch")
SIZES: dict[str, MedformerConfig] = {
    # a 16-channel stride-1 conv before the two stride-2 ones (docs/benchmarks.md, "Which backbone")
    "medformer_small": MedformerConfig(**_DEFAULT_STEMS, stem_layers=3),
    "medformer_large": MedformerConfig(**_LARGE, **_DEFAULT_STEMS),
    # the default small size until the stride-1 stem layer (two stride-2 convs, one BatchNorm)
    "medformer_small_stem2": MedformerConfig(**_BN_STEMS),
    # the thesis architecture, as it was trained there (and here until the conv stem)
    "medformer_small_thesis": MedformerConfig(),
    "medformer_large_thesis": MedformerConfig(**_LARGE),
    # the conv stem in 3D too: the default sizes between the conv stem and the patchify 3D stem
    "medformer_small_conv3d": MedformerConfig(**_CONV_STEM),
    "medformer_large_conv3d": MedformerConfig(**_LARGE, **_CONV_STEM),
}


def _param(*shape: int) -> nn.Parameter:
    p = nn.Parameter(torch.zeros(*shape))
    trunc_normal_(p, std=0.02)
    return p


class ConvStem(nn.Module):
    """3x3 stride-2 convs (norm, GELU) from the pixels to the patch grid, then a 1x1 conv to `dim`
    (Xiao et al. 2021, "Early convolutions help transformers see better").

    The sizes use BatchNorm: with GroupNorm, LayerNorm or no norm the body's tokens lost their
    differences between images within the first steps on BreastMNIST and most runs predicted the
    majority class (docs/benchmarks.md, "Which backbone"). In training, a sample's tokens then
    depend on its batch; `stem_calls` keeps processes in step.
    """

    def __init__(
        self, in_chans: int, dim: int, patch_size: int, width: int, spatial_dims: int, n_layers: int = 0,
        norm: str = "group", flat_stride: int = 1,
    ):
        """`flat_stride`: the stride of the layers before the stride-2 ones (2: they halve the grid too)."""
        super().__init__()
        n_down = int(math.log2(patch_size))
        if 2**n_down != patch_size:
            raise ValueError(f"stem=conv needs a power-of-two patch_size, got {patch_size}")
        n_flat = max(0, n_layers - n_down)
        # channels double at each stride-2 conv, from `width` at the first; the stride-1 convs before
        # it run at full resolution, where each channel costs the most, so they get half of `width`
        widths = [max(1, width // 2)] * n_flat + [min(width * 2**i, dim) for i in range(n_down)]
        strides = [flat_stride] * n_flat + [2] * n_down
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = []
        channels = in_chans
        for out, stride in zip(widths, strides, strict=True):
            layers += [conv(channels, out, 3, stride, 1, bias=False), _norm(norm, out, spatial_dims), nn.GELU()]
            channels = out
        self.layers = nn.Sequential(*layers)
        self.proj = conv(channels, dim, 1)

    @property
    def first(self) -> nn.Module:
        return self.layers[0]

    def forward(self, images: torch.Tensor, modalities: list[str] | None = None) -> torch.Tensor:
        """`modalities`: each image's, for DomainBatchNorm layers."""
        x = _conv_any_channels(self.first, images)
        for layer in self.layers[1:]:
            x = layer(x, modalities) if isinstance(layer, DomainBatchNorm) else layer(x)
        return self.proj(x)


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of [B, C, *spatial] at each position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(1, channels)
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "domain_batch":
        return DomainBatchNorm(channels)
    if kind == "layer":  # over channels, at each position (ConvNeXt's LayerNorm2d)
        return _ChannelLayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model stem_norm must be batch, group, layer or none, got {kind!r}")


def _flat_stride(cfg: MedformerConfig, spatial_dims: int) -> int:
    """Stride of the conv stem's full-resolution layers for the model's image size (1 or 2)."""
    size = cfg.image_size_2d if spatial_dims == 2 else cfg.image_size_3d
    return 2 if size > cfg.stem_full_res_max else 1


def _stem_kind(cfg: MedformerConfig, spatial_dims: int) -> str:
    """`stem_3d` for volumes when it is set, else `stem`."""
    return cfg.stem_3d if spatial_dims == 3 and cfg.stem_3d else cfg.stem


def token_patch_size(cfg: MedformerConfig, spatial_dims: int) -> int:
    """Pixels (voxels) per side of one patch token of 2D (2) or 3D (3) inputs."""
    if _stem_kind(cfg, spatial_dims) != "conv":
        return cfg.patch_size
    n_flat = max(0, cfg.stem_layers - int(math.log2(cfg.patch_size)))
    return cfg.patch_size * _flat_stride(cfg, spatial_dims) ** n_flat


def _stem(in_chans: int, spatial_dims: int, cfg: MedformerConfig) -> nn.Module:
    """The pixels-to-patch-grid module of one dim: a patchify conv or a ConvStem."""
    p, d, kind = cfg.patch_size, cfg.hidden_dim, _stem_kind(cfg, spatial_dims)
    if kind == "conv":
        return ConvStem(in_chans, d, p, cfg.stem_width, spatial_dims, cfg.stem_layers, cfg.stem_norm,
                        _flat_stride(cfg, spatial_dims))
    if kind == "patch":
        return (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(in_chans, d, p, p)
    key = "stem_3d" if spatial_dims == 3 and cfg.stem_3d else "stem"
    raise ValueError(f"model {key} must be patch or conv, got {kind!r}")


def _conv_any_channels(conv: nn.Conv2d | nn.Conv3d, images: torch.Tensor) -> torch.Tensor:
    """`conv(images)`, where a 1-channel image acts as a replicated RGB one for a 3-channel conv."""
    weight = conv.weight
    if images.shape[1] != weight.shape[1]:
        if images.shape[1] != 1:
            raise ValueError(
                f"{images.ndim - 2}D input has {images.shape[1]} channels; expected {weight.shape[1]} or 1"
            )
        weight = weight.sum(1, keepdim=True)
    conv_fn = F.conv2d if images.ndim == 4 else F.conv3d
    return conv_fn(images, weight, conv.bias, conv.stride, conv.padding)


class InputAdaptformer(nn.Module):
    """Patchify (2D or 3D) and cross-attend domain-conditioned latent queries to the patches."""

    def __init__(self, cfg: MedformerConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.patch_size = {"2d": token_patch_size(cfg, 2), "3d": token_patch_size(cfg, 3)}
        self.grid_2d = cfg.image_size_2d // self.patch_size["2d"]
        self.grid_3d = cfg.image_size_3d // self.patch_size["3d"]
        self.patch_2d = _stem(3, 2, cfg)
        self.patch_3d = _stem(1, 3, cfg)
        self.pos_2d = _param(1, self.grid_2d**2, d)
        self.pos_3d = _param(1, self.grid_3d**3, d)
        self.latents = _param(cfg.num_latent_tokens, cfg.latent_dim)
        self.dim_latents = nn.ParameterDict({"2d": _param(cfg.latent_dim), "3d": _param(cfg.latent_dim)})
        self.modality_latents = nn.ParameterDict()
        self.body_part_latents = nn.ParameterDict()
        self.cross = Block(cfg.latent_dim, cfg.heads, cfg.mlp_ratio, context_dim=d, dropout=cfg.dropout)
        self.proj = nn.Linear(cfg.latent_dim, d)
        self.latent_dim = cfg.latent_dim
        self.input_norm = cfg.input_norm
        self.num_tokens = cfg.num_latent_tokens + 3
        self.stem_batchnorm = has_batchnorm(self)  # as CNNModel: synced BatchNorm needs equal stem calls
        self.grad_checkpointing = False

    def add_domain(self, modality: str, body_part: str) -> None:
        if modality not in self.modality_latents:
            self.modality_latents[modality] = _param(self.latent_dim)
        if body_part not in self.body_part_latents:
            self.body_part_latents[body_part] = _param(self.latent_dim)
        for norm in self.modules():
            if isinstance(norm, DomainBatchNorm):
                norm.add_domain(modality)

    def patch_tokens(self, images: torch.Tensor, modalities: list[str] | None = None) -> torch.Tensor:
        """[b, C, H, W] or [b, C, D, H, W] -> patch tokens with position embeddings [b, T, d].
        `modalities` (each image's) are needed by a stem with stem_norm=domain_batch."""
        stem = self.patch_2d if images.ndim == 4 else self.patch_3d
        if self.input_norm == "image":  # each image to zero mean, unit variance over channels and pixels
            images = F.layer_norm(images, images.shape[1:])
        x = stem(images, modalities) if isinstance(stem, ConvStem) else _conv_any_channels(stem, images)
        grid = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        return x + self.position_embedding(grid, images.ndim == 4)

    def position_embedding(self, grid: tuple[int, ...], is_2d: bool) -> torch.Tensor:
        """[1, prod(grid), hidden]: the learned position embeddings, resampled to `grid` if it differs."""
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

    def forward(self, inputs: Inputs, patches: dict | None = None, keep: dict[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Canonical tokens [B, num_tokens, hidden]; `patches`, when given, receives {dim: (images,
        batch rows, patch grid [b, hidden, *grid])} for the dense heads. `keep` {dim: [b, K] patch
        indices} leaves only those patch tokens in the cross-attention's context (masked modelling)."""
        queries = self.queries(inputs)
        groups = merged_groups(inputs)
        out = None
        for dim, (images, rows) in groups.items():
            tokens = self.patch_tokens(images, [inputs.modality[i] for i in rows.tolist()])
            if keep is not None and dim in keep:
                tokens = tokens.gather(1, keep[dim][..., None].expand(-1, -1, tokens.shape[-1]))
            if patches is not None:
                grid = [s // self.patch_size[dim] for s in images.shape[2:]]
                patches[dim] = (images, rows, tokens.transpose(1, 2).reshape(len(images), -1, *grid))
            z = self.proj(_maybe_checkpointed(self.cross, self.grad_checkpointing)(queries[rows], tokens))
            if out is None:
                out = z.new_zeros(len(inputs), *z.shape[1:])
            out = out.index_copy(0, rows, z)
        if self.training and self.stem_batchnorm:
            absent = dims_only_elsewhere(set(groups), out.device)
            out = zero_weighted(out, [self.patch_tokens(self._empty_batch(dim, out.device), []) for dim in absent])
        return out

    def _empty_batch(self, dim: str, device: torch.device) -> torch.Tensor:
        """No images of `dim` at the configured size: this process's part of a synced BatchNorm step."""
        if dim == "2d":
            return torch.zeros(0, 3, *(2 * [self.grid_2d * self.patch_size[dim]]), device=device)
        return torch.zeros(0, 1, *(3 * [self.grid_3d * self.patch_size[dim]]), device=device)


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

    def forward(self, tokens: torch.Tensor, inputs: Inputs, skip: nn.ModuleDict | dict = ()) -> dict[str, torch.Tensor]:
        """Logits of each task of the batch but those in `skip` (the dense tasks)."""
        out = {}
        for task in dict.fromkeys(inputs.task):
            if task in skip:
                continue
            if task not in self.heads:
                raise KeyError(f"model has no head for task {task!r}; heads: {sorted(self.heads)}")
            rows = inputs.rows_of_task(task).to(tokens.device)
            out[task] = self.heads[task](self.task_features(tokens[rows], task))
        return out


class Medformer(nn.Module):
    """The shared backbone with domain latents and task heads (see module docstring)."""

    def __init__(self, cfg: MedformerConfig, datasets: list[DatasetInfo] = (), dense_heads: dict[str, str] | None = None):
        """`dense_heads`: head kind (transformer or cnn) per segmentation/regression dataset."""
        super().__init__()
        self.cfg = cfg
        self.dense_heads = nn.ModuleDict()  # segmentation / regression heads, by task
        self.input_adapt = InputAdaptformer(cfg)
        dpr = [x.item() for x in torch.linspace(0, cfg.drop_path, cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.hidden_dim, cfg.heads, cfg.mlp_ratio, drop_path=dpr[i], dropout=cfg.dropout)
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.output_adapt = OutputAdaptformer(cfg)
        self.grad_checkpointing = False
        self.apply(self._init_weights)
        self._init_cross_attention()
        for info in datasets:
            self.add_dataset(info, head=(dense_heads or {}).get(info.flag))

    @property
    def embed_dim(self) -> int:
        return self.cfg.hidden_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the activations of each body block and of the Input Adaptformer's cross-attention
        in the backward pass (timm's name for it). The stem is not recomputed: its BatchNorm would
        update its running statistics twice."""
        self.grad_checkpointing = self.input_adapt.grad_checkpointing = enable

    def dense_spec(self, dim: str) -> EncoderSpec:
        """The features dense heads get: the patch grid (before the body) and the body tokens."""
        d = self.cfg.hidden_dim
        return EncoderSpec((d,), d, 0, grid_has_context=False, spatial_dims=2 if dim == "2d" else 3)

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

    def add_dataset(self, info: DatasetInfo, task: str | None = None, head: str | None = None) -> None:
        """Add the dataset's modality/body-part latents and its task head (if not present); a
        segmentation or regression dataset gets a dense head of kind `head` (transformer or cnn)."""
        self.input_adapt.add_domain(info.modality, info.body_part)
        add_dataset_head(self, info, task or info.flag, head)

    def add_task(self, name: str, n_outputs: int) -> None:
        self.output_adapt.add_task(name, n_outputs)

    def backbone_parameter_names(self) -> list[str]:
        """Parameters shared by all datasets (everything but domain latents, task latents, heads)."""
        per_dataset = ("modality_latents.", "body_part_latents.", "task_latents.", "heads.")
        return [n for n, _ in self.named_parameters() if not any(s in n for s in per_dataset)]  # heads. covers dense_heads.

    def tokens(self, inputs: Inputs, patches: dict | None = None, keep: dict[str, torch.Tensor] | None = None
               ) -> torch.Tensor:
        """Body tokens [B, N, hidden] after the Input Adaptformer and the transformer blocks
        (`patches`, `keep`: see InputAdaptformer.forward)."""
        x = self.input_adapt(inputs, patches, keep)
        for block in self.blocks:
            x = _maybe_checkpointed(block, self.grad_checkpointing)(x)
        return self.norm(x)

    def encode(self, inputs: Inputs) -> torch.Tensor:
        """The shared representation [B, hidden]: mean of the body tokens."""
        return self.tokens(inputs).mean(1)

    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """Logits per task, for the rows of that task in ascending order (segmentation: [b, K, *S],
        regression: [b])."""
        dense = [t for t in dict.fromkeys(inputs.task) if t in self.dense_heads]
        if not dense:
            return self.output_adapt(self.tokens(inputs), inputs)
        patches: dict = {}
        tokens = self.tokens(inputs, patches)
        out = self.output_adapt(tokens, inputs, skip=self.dense_heads)
        for task in dense:
            out[task] = self.dense_heads[task](dense_features(patches, tokens, inputs.rows_of_task(task)))
        return out

    def encode_and_classify(self, inputs: Inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`encode` and `forward` from one pass through the body (SSL + pseudo-label runs)."""
        tokens = self.tokens(inputs)
        return tokens.mean(1), self.output_adapt(tokens, inputs)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` in this model's layout where only the layout differs (DomainBatchNorm.adapt_state)."""
        for name, module in self.named_modules():
            if isinstance(module, DomainBatchNorm):
                state = module.adapt_state(state, f"{name}.")
        return state

    def checkpoint_mismatch(self, state: dict[str, torch.Tensor]) -> str | None:
        """Why `state` cannot be this model's, when its backbone is another named size's (e.g. an
        encoder exported before medformer_small gained its conv stem); None when it may fit."""
        theirs = backbone_shapes(state)
        if _fits(theirs, backbone_shapes(self.state_dict())):
            return _grid_mismatch(state, self.state_dict())
        name = next((n for n in SIZES if _fits(theirs, _size_shapes(n))), None)
        if name is None:
            return None
        return f"its backbone is a {name} one; load it with model.name={name}"


def _maybe_checkpointed(module: nn.Module, enabled: bool):
    """`module`, or a call of it that recomputes its activations in the backward pass (training only)."""
    if enabled and module.training and torch.is_grad_enabled():
        return functools.partial(checkpoint, module, use_reentrant=False)
    return module


def dense_features(patches: dict, tokens: torch.Tensor, rows: torch.Tensor) -> DenseFeatures:
    """The DenseFeatures of batch rows `rows` (one dim) from a pass that kept its patch grids."""
    for images, group_rows, grid in patches.values():
        position = {r: i for i, r in enumerate(group_rows.tolist())}
        if all(r in position for r in rows.tolist()):
            pick = torch.tensor([position[r] for r in rows.tolist()], device=images.device)
            x = images[pick]
            if x.ndim == 4 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            return DenseFeatures(x, [grid[pick]], tokens[rows.to(tokens.device)])
    raise ValueError("the rows of a segmentation/regression task must all be 2D or all 3D")


def _grid_mismatch(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str | None:
    """Why a state of this size's backbone has another patch-token grid (another image size or token
    patch), or None."""
    for dim in ("2d", "3d"):
        key = f"input_adapt.pos_{dim}"
        if key in state and state[key].shape != own[key].shape:
            return (f"its {dim.upper()} patch-token grid has {state[key].shape[1]} tokens, this model's "
                    f"{own[key].shape[1]}; set data.size to the size it was trained at (an encoder trained "
                    "above 32 px before 2026-12-08 also needs model.overrides.stem_full_res_max=64)")
    return None


def _fits(theirs: dict[str, tuple[int, ...]], ours: dict[str, tuple[int, ...]]) -> bool:
    return all(ours.get(k) == shape for k, shape in theirs.items())


@functools.cache
def _size_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return backbone_shapes(Medformer(SIZES[name]).state_dict())


def backbone_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes of a Medformer state's shared tensors: no per-dataset latents or heads, no position
    embeddings (their length follows the image size) and no norm statistics (their layout, BatchNorm
    or DomainBatchNorm, is adapted on loading; their shapes follow the norm's weight)."""
    per_dataset = ("modality_latents.", "body_part_latents.", "task_latents.", "heads.", ".pos_")  # heads. covers dense_heads.
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    return {k: tuple(v.shape) for k, v in state.items()
            if not any(s in k for s in per_dataset) and not k.endswith(statistics)}


def medformer_config(name: str, **overrides) -> MedformerConfig:
    if name not in SIZES:
        raise ValueError(f"unknown Medformer size {name!r}; choose from {sorted(SIZES)}")
    cfg = MedformerConfig(**{**asdict(SIZES[name]), **overrides})
    for size, dims in ((cfg.image_size_2d, 2), (cfg.image_size_3d, 3)):
        if size % token_patch_size(cfg, dims):
            raise ValueError(f"{dims}D image size {size} is not a multiple of the token patch size "
                             f"{token_patch_size(cfg, dims)}; choose a size that is")
    return cfg


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

