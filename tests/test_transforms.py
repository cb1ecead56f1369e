"""Behaviour of medformer.data.transforms: shapes, scale, determinism, SSL views."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from medformer.config import AugmentConfig
from medformer.data.transforms import (
    RAND_AUGMENT_OPS,
    MultiViewTransform,
    RandAugment,
    ViewConfig,
    eval_transform,
    normalize,
    train_transform,
    view_transform,
)

PNEUMONIA = Path("/work/shared/data/medmnist/pneumoniamnist.npz")

SHAPES = [
    ("2d", (1, 28, 28)),
    ("2d", (3, 28, 28)),
    ("2d", (1, 64, 64)),
    ("2d", (3, 64, 64)),
    ("3d", (1, 28, 28, 28)),
]


def _image(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    # some structure, so crops and rotations visibly move things
    x[..., : shape[-2] // 3, :] *= 0.2
    return x


def _all_transforms(dim):
    return {
        "train": train_transform(AugmentConfig(), dim),
        "view": view_transform(ViewConfig(blur_p=0.5, gray_p=0.5), dim),
        "eval": eval_transform(),
    }


def _in_range(y):
    return float(y.min()) >= -1.0 - 1e-6 and float(y.max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("dim,shape", SHAPES)
def test_shapes_dtypes_and_range(dim, shape):
    x = _image(shape)
    torch.manual_seed(0)
    for name, tf in _all_transforms(dim).items():
        for _ in range(3):
            y = tf(x)
            assert y.shape == x.shape, name
            assert y.dtype == torch.float32, name
            assert torch.isfinite(y).all(), name
            assert _in_range(y), name
    views = MultiViewTransform(ViewConfig(), dim)(x)
    assert all(v.shape == x.shape and v.dtype == torch.float32 for v in views)


def test_normalize_scale():
    x = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(normalize(x), torch.tensor([-1.0, 0.0, 1.0]))


@pytest.mark.parametrize("dim,shape", [SHAPES[0], SHAPES[4]])
def test_eval_deterministic_and_equals_normalize(dim, shape):
    x = _image(shape)
    tf = eval_transform()
    a, b = tf(x), tf(x)
    assert torch.equal(a, b)
    assert torch.equal(a, normalize(x))
    # disabled augmentation is the eval transform
    off = train_transform(AugmentConfig(enabled=False), dim)
    assert torch.equal(off(x), normalize(x))
    assert torch.equal(x, _image(shape))  # input untouched


@pytest.mark.parametrize("dim,shape", [SHAPES[0], SHAPES[3], SHAPES[4]])
def test_train_changes_image_and_stays_in_range(dim, shape):
    x = _image(shape)
    tf = train_transform(AugmentConfig(), dim)
    torch.manual_seed(1)
    outs = [tf(x) for _ in range(4)]
    for y in outs:
        assert not torch.allclose(y, normalize(x))
        assert _in_range(y)
    assert torch.equal(x, _image(shape))  # input untouched


@pytest.mark.parametrize("dim,shape", [SHAPES[0], SHAPES[1], SHAPES[4]])
@pytest.mark.parametrize("kind", ["train", "view", "multi"])
def test_seed_reproducibility(dim, shape, kind):
    x = _image(shape)
    if kind == "train":
        tf = train_transform(AugmentConfig(), dim)
    elif kind == "view":
        tf = view_transform(ViewConfig(blur_p=0.5), dim)
    else:
        tf = MultiViewTransform(ViewConfig(), dim)

    def run(seed):
        torch.manual_seed(seed)
        out = [tf(x) for _ in range(3)]
        return torch.stack([torch.stack(o) if isinstance(o, list) else o for o in out])

    a, b, c = run(123), run(123), run(124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_transforms_pickle_for_spawned_workers():
    x = _image((1, 28, 28))
    tf = train_transform(AugmentConfig(), "2d")
    tf2 = pickle.loads(pickle.dumps(tf))
    torch.manual_seed(5)
    a = tf(x)
    torch.manual_seed(5)
    assert torch.equal(a, tf2(x))
    for obj in (
        train_transform(AugmentConfig(), "3d"),
        MultiViewTransform(ViewConfig(), "3d"),
        eval_transform(),
    ):
        pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("shape", [(1, 28, 28, 28), (1, 8, 12, 16)])
def test_3d_flips_and_rot90_are_voxel_permutations(shape):
    x = _image(shape)
    cfg = AugmentConfig(flip_3d=0.5, rot90_3d=1.0, rotate_3d_degrees=0.0, intensity_3d=0.0)
    tf = train_transform(cfg, "3d")
    ref = torch.sort(normalize(x).flatten()).values
    torch.manual_seed(0)
    changed = 0
    for _ in range(12):
        y = tf(x)
        assert y.shape == x.shape
        assert torch.equal(torch.sort(y.flatten()).values, ref)
        changed += not torch.equal(y, normalize(x))
    assert changed >= 10

    # the SSL view with crop, rotation, intensity and noise off is the same permutation family
    vcfg = ViewConfig(
        crop_scale_min_3d=1.0, rotate_3d_degrees=0.0, intensity_3d=0.0, noise_std_3d=0.0
    )
    y = view_transform(vcfg, "3d")(x)
    assert torch.equal(torch.sort(y.flatten()).values, ref)


def test_3d_rotation_and_intensity_change_values():
    x = _image((1, 28, 28, 28))
    cfg = AugmentConfig(flip_3d=0.0, rot90_3d=0.0, rotate_3d_degrees=10.0, intensity_3d=0.0)
    torch.manual_seed(0)
    y = train_transform(cfg, "3d")(x)
    assert not torch.equal(
        torch.sort(y.flatten()).values, torch.sort(normalize(x).flatten()).values
    )
    # a small rotation keeps the volume close to the original
    assert (y - normalize(x)).abs().mean() < 0.8


@pytest.mark.parametrize("dim,shape", [SHAPES[0], SHAPES[3], SHAPES[4]])
def test_multiview_returns_n_different_views(dim, shape):
    x = _image(shape)
    torch.manual_seed(0)
    for n in (2, 3):
        mv = MultiViewTransform(ViewConfig(n_views=n), dim)
        views = mv(x)
        assert isinstance(views, list) and len(views) == n == mv.n_views
        for i in range(n):
            assert views[i].shape == x.shape
            for j in range(i + 1, n):
                assert not torch.equal(views[i], views[j])


def test_multiview_asymmetric_configs():
    x = _image((1, 28, 28))
    mv = MultiViewTransform([ViewConfig(blur_p=1.0), ViewConfig(blur_p=0.1, solarize_p=0.2)], "2d")
    assert mv.n_views == 2
    assert len(mv(x)) == 2


def test_gray_stays_gray_and_rgb_grayscale():
    gray = _image((1, 28, 28))
    cfg = ViewConfig(
        saturation=0.8, hue=0.4, color_jitter_p=1.0, gray_p=1.0, blur_p=1.0, solarize_p=0.5
    )
    torch.manual_seed(0)
    for tf in (
        view_transform(cfg, "2d"),
        train_transform(AugmentConfig(randaugment_n=4, randaugment_m=20), "2d"),
    ):
        for _ in range(10):
            assert tf(gray).shape == (1, 28, 28)
    # RandAugment never draws colour ops for gray images
    ra = RandAugment(num_ops=1, magnitude=9)
    assert "Color" in ra.ops and "Color" not in ra.gray_ops
    assert set(ra.gray_ops) <= set(RAND_AUGMENT_OPS)
    # hue/saturation on a gray image would be a no-op at best: jitter is brightness/contrast only,
    # so a constant gray image stays constant
    flat = torch.full((1, 28, 28), 0.4)
    y = view_transform(
        dataclasses.replace(cfg, crop_scale_min=1.0, rotate_degrees=0.0, solarize_p=0.0), "2d"
    )(flat)
    assert torch.allclose(y, y.flatten()[0].expand_as(y), atol=1e-5)
    # RGB with gray_p=1: three equal channels
    rgb = _image((3, 28, 28))
    y = view_transform(dataclasses.replace(cfg, hue=0.0, saturation=0.0, solarize_p=0.0), "2d")(rgb)
    assert y.shape == (3, 28, 28)
    assert torch.allclose(y[0], y[1]) and torch.allclose(y[1], y[2])


def test_randaugment_all_ops_keep_shape_and_range():
    ra = RandAugment(num_ops=1, magnitude=15, ops=(*RAND_AUGMENT_OPS, "Solarize", "Invert"))
    for shape in ((1, 28, 28), (3, 64, 64)):
        x = _image(shape)
        for op in ra.ops:
            for sign in (-1.0, 1.0):
                y = ra._apply(x, op, 0.5, sign)
                assert y.shape == x.shape and y.dtype == torch.float32, op
                assert float(y.min()) >= -1e-6 and float(y.max()) <= 1 + 1e-6, op
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        RandAugment(ops=("Hue",))


def test_bad_inputs():
    with pytest.raises(ValueError, match="dim must be"):
        train_transform(AugmentConfig(), "4d")
    with pytest.raises(ValueError, match="2D transforms expect"):
        train_transform(AugmentConfig(), "2d")(torch.rand(1, 8, 8, 8))
    with pytest.raises(ValueError, match="3D transforms expect"):
        view_transform(ViewConfig(), "3d")(torch.rand(1, 8, 8))


def test_real_pneumoniamnist_image():
    if not PNEUMONIA.is_file():
        pytest.skip(f"{PNEUMONIA} not present")
    with np.load(PNEUMONIA) as data:
        img = data["train_images"][0]
    x = torch.from_numpy(img.astype(np.float32) / 255.0)
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    torch.manual_seed(0)
    for tf in (
        train_transform(AugmentConfig(), "2d"),
        view_transform(ViewConfig(), "2d"),
        eval_transform(),
    ):
        y = tf(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert _in_range(y)
    views = MultiViewTransform(ViewConfig(), "2d")(x)
    assert len(views) == 2 and not torch.equal(views[0], views[1])
