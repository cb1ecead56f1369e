"""Explainability panels of a fine-tuned cell: Grad-CAM for CNNs, attention rollout for Medformer.

Test images are grouped TP/FP/FN/TN (binary tasks; correct/wrong otherwise), the most confident
of each group shown with its map. Grad-CAM comes from pytorch-grad-cam, at R3D-18's layer3 for
volumes and at the deepest timm stage with a map of at least 4 px for images. The Medformer map
follows the information path to the task head: task latent -> body tokens (Output Adaptformer
attention), through the body blocks (attention rollout with the residual), then latents ->
patches (Input Adaptformer cross-attention).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ..config import FinetuneConfig, load_config  # noqa: E402
from ..data.batch import Inputs, make_inputs  # noqa: E402
from ..data.domains import BINARY, MULTI_LABEL, ORDINAL, dataset_info  # noqa: E402
from ..data.loaders import eval_loaders  # noqa: E402
from ..data.transforms import denormalize, eval_transform  # noqa: E402
from ..models.heads import logits_to_scores  # noqa: E402
from ..models.medformer import Medformer  # noqa: E402
from ..models.weights import load_encoder  # noqa: E402


# -- loading a cell and predicting ---------------------------------------------------------------
def load_cell_model(directory: Path) -> tuple[nn.Module, object]:
    """The cell's best weights in a freshly built model, and its FinetuneConfig."""
    cfg = load_config(FinetuneConfig, directory / "config.yaml")
    infos = [dataset_info(f) for f in cfg.data.datasets]
    model, _ = load_encoder(str(directory / "best.safetensors"), cfg.model, infos, cfg.data.size, strict=True)
    return model.eval(), cfg


@torch.no_grad()
def predict_split(model: nn.Module, cfg, flag: str, split: str = "test", batch_size: int = 128):
    """Images [N, C, ...], Evaluator-layout scores and labels [N, L] of one split."""
    loader = eval_loaders(cfg.data, split, batch_size, eval_transform(), flags=[flag])[flag]
    task = dataset_info(flag).task
    images, scores, labels = [], [], []
    for batch in loader:
        inputs: Inputs = batch["inputs"]
        ordered = torch.empty(len(inputs), *inputs.groups[0][0].shape[1:])
        for x, rows in inputs.groups:
            ordered[rows] = x
        images.append(ordered)
        scores.append(logits_to_scores(model(inputs)[flag], task))
        labels.append(batch["targets"][flag].reshape(len(inputs), -1))
    return torch.cat(images), torch.cat(scores).numpy(), torch.cat(labels).numpy()


def group_cases(scores: np.ndarray, labels: np.ndarray, task: str, per_group: int) -> dict[str, list[int]]:
    """Indices of the most confident cases per TP/FP/FN/TN (binary) or correct/wrong group."""
    if task == BINARY:
        p = scores.reshape(-1)
        y = labels.reshape(-1).astype(int)
        pred = (p > 0.5).astype(int)
        groups = {"TP": (y == 1) & (pred == 1), "FP": (y == 0) & (pred == 1),
                  "FN": (y == 1) & (pred == 0), "TN": (y == 0) & (pred == 0)}
        confidence = {"TP": p, "FP": p, "FN": 1 - p, "TN": 1 - p}
    else:
        if task == MULTI_LABEL:
            correct = ((scores > 0.5) == labels.astype(bool)).all(1)
            conf = np.abs(scores - 0.5).mean(1)
        else:
            correct = scores.argmax(1) == labels.reshape(-1)
            conf = scores.max(1)
        groups = {"correct": correct, "wrong": ~correct}
        confidence = {"correct": conf, "wrong": conf}
    out = {}
    for name, mask in groups.items():
        idx = np.flatnonzero(mask)
        out[name] = idx[np.argsort(-confidence[name][idx], kind="stable")][:per_group].tolist()
    return out


# -- maps ---------------------------------------------------------------------------------------
def _target_score(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample scalar whose gradient explains the predicted class."""
    if task == BINARY:
        z = logits.reshape(-1)
        return torch.where(z > 0, z, -z)
    if task == MULTI_LABEL or logits.shape[1] == 1:
        return logits.max(1).values
    if task == ORDINAL:
        z = logits.sum(1)
        return torch.where(z > 0, z, -z)
    return logits.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)


def _normalize(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-8)).reshape(maps.shape)


def _upsample(maps: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(maps[:, None], size=spatial, mode=mode, align_corners=False)[:, 0]


def gradcam_layer(model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, str]:
    """Layer for Grad-CAM: 3D -> layer3 of R3D-18; 2D -> the deepest timm feature stage with a
    map of at least 4 px a side (28 px inputs leave only 1 px at the last stage)."""
    if images.ndim == 5:
        return model.encoder_3d.layer3, "encoder_3d.layer3"
    enc = model.encoder_2d
    names = [f["module"] for f in getattr(enc, "feature_info", [])]
    if not names:
        raise ValueError("this encoder lists no feature stages (timm feature_info)")
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:  # returning a value would replace the output
            shapes[name] = tuple(output.shape)

        return hook

    hooks = [enc.get_submodule(n).register_forward_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            enc(model.prepare_2d(images[:1]))
    finally:
        for h in hooks:
            h.remove()
    big = [n for n in names if n in shapes and min(shapes[n][2:]) >= 4]
    name = big[-1] if big else names[-1]
    return enc.get_submodule(name), name


class _ImagesToLogits(nn.Module):
    """One dataset's images in, its task logits out: the `model(tensor)` pytorch-grad-cam calls."""
    def __init__(self, model: nn.Module, flag: str):
        super().__init__()
        self.model, self.flag = model, flag

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(make_inputs(list(images), [self.flag] * len(images)))[self.flag]


class _PredictedScore:
    """pytorch-grad-cam target: the score of the predicted class of one sample's logits."""
    def __init__(self, task: str):
        self.task = task

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return _target_score(logits.float()[None], self.task)[0]


def grad_cam(model: nn.Module, images: torch.Tensor, flag: str, layer: nn.Module) -> torch.Tensor:
    """Grad-CAM maps (pytorch-grad-cam) [B, *spatial of the input] in [0, 1] for the predicted class."""
    from pytorch_grad_cam import GradCAM

    target = _PredictedScore(dataset_info(flag).task)
    with torch.enable_grad(), GradCAM(model=_ImagesToLogits(model, flag), target_layers=[layer]) as cam:
        maps = cam(input_tensor=images, targets=[target] * len(images))
    return torch.as_tensor(maps, dtype=torch.float32)


@torch.no_grad()
def attention_rollout(model: nn.Module, inputs: Inputs, task: str) -> torch.Tensor:
    """Medformer patch-level relevance [B, *spatial of the input] in [0, 1] for `task`."""
    ia, oa = model.input_adapt, model.output_adapt
    images, rows = inputs.groups[0]
    if len(inputs.groups) != 1:
        raise ValueError("attention maps take batches of one image shape")
    queries = ia.queries(inputs)[rows]
    patches = ia.patch_tokens(images, [inputs.modality[i] for i in rows.tolist()])
    cross = ia.cross
    a_in = cross.attn.attention_weights(cross.norm_q(queries), cross.norm_context(patches)).mean(1)  # [b, Nq, P]
    x = ia.proj(cross(queries, patches))
    n = x.shape[1]
    eye = torch.eye(n, device=x.device)
    rollout = eye.expand(len(x), n, n)
    for block in model.blocks:
        a = block.attn.attention_weights(block.norm_q(x)).mean(1)
        a = 0.5 * a + 0.5 * eye  # the residual path carries half the signal
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
        x = block(x)
    tokens = model.norm(x)
    q = oa.task_latents[task].expand(len(x), -1, -1)
    a_out = oa.cross.attn.attention_weights(oa.cross.norm_q(q), oa.cross.norm_context(tokens)).mean((1, 2))  # [b, N]
    relevance = (a_out[:, None] @ rollout @ a_in)[:, 0]  # [b, P]
    p = ia.patch_size["2d" if images.ndim == 4 else "3d"]
    grid = tuple(s // p for s in images.shape[2:])
    return _normalize(_upsample(relevance.reshape(len(x), *grid), tuple(images.shape[2:])))


def explain_maps(model: nn.Module, images: torch.Tensor, flag: str) -> tuple[torch.Tensor, str]:
    """Maps for a stack of one dataset's images, and the method's name."""
    inputs = make_inputs(list(images), [flag] * len(images))
    if isinstance(model, Medformer):
        return attention_rollout(model, inputs, flag), "attention rollout (Input/Output Adaptformer cross-attention)"
    layer, name = gradcam_layer(model, images)
    return grad_cam(model, images, flag, layer), f"Grad-CAM (pytorch-grad-cam) at {name}"


# -- panels -------------------------------------------------------------------------------------
def _display(image: torch.Tensor, heat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """2D picture [H, W(, 3)] in [0, 1] and its map; 3D volumes show their middle slice."""
    img = denormalize(image).clamp(0, 1)
    if img.ndim == 4:  # [C, D, H, W]
        mid = img.shape[1] // 2
        img, heat = img[:, mid], heat[mid]
    img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    return img.numpy(), heat.numpy()


def explain_panel(
    model: nn.Module, images: torch.Tensor, scores: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]],
    flag: str, title: str, path: Path,
) -> Path:
    """A grid: one row per group, the group's cases with their map overlaid; written as PNG."""
    chosen = [i for idx in groups.values() for i in idx]
    maps, method = explain_maps(model, images[chosen], flag) if chosen else (torch.empty(0), "")
    heat = dict(zip(chosen, maps, strict=True))
    per_row = max(1, max((len(v) for v in groups.values()), default=1))
    cols = 2 * per_row  # each case: the image, then the image with its map
    fig, axes = plt.subplots(len(groups), cols, figsize=(max(1.8 * cols, 6.0), 2.0 * len(groups) + 0.6), squeeze=False)
    for r, (name, idx) in enumerate(groups.items()):
        for ax in axes[r]:
            ax.axis("off")
        if not idx:
            axes[r][0].text(0.5, 0.5, f"{name}: none", ha="center", va="center")
        for c, i in enumerate(idx):
            img, hm = _display(images[i], heat[i])
            cmap = "gray" if img.ndim == 2 else None
            axes[r][2 * c].imshow(img, cmap=cmap)
            axes[r][2 * c + 1].imshow(img, cmap=cmap)
            axes[r][2 * c + 1].imshow(hm, cmap="jet", alpha=0.4)
            s = scores[i]
            score = f"p={float(s):.2f}" if np.size(s) == 1 else f"pred={int(np.argmax(s))}"
            axes[r][2 * c].set_title(f"{name} y={labels[i].astype(int).tolist()} {score}", fontsize=7)
    fig.suptitle(f"{title}\n{method}", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def explain_cell(directory: Path, flag: str, per_group: int, title: str, path: Path) -> Path:
    """Load a finished cell, predict its test split, draw the grouped panel."""
    model, cfg = load_cell_model(directory)
    images, scores, labels = predict_split(model, cfg, flag)
    groups = group_cases(scores, labels, dataset_info(flag).task, per_group)
    return explain_panel(model, images, scores, labels, groups, flag, title, path)
