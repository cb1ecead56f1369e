"""Batched, on-device augmentation: per-sample parameters in the configured ranges, views that do not
depend on the batch, and in-memory batches that equal the per-sample path's."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from medformer.config import AugmentConfig, ConfigError, DataConfig, load_config
from medformer.config.pretrain import PretrainConfig, view_list
from medformer.data.bank import DeviceAugment, ImageBank, use_bank
from medformer.data.batch import collate
from medformer.data.loaders import train_dataset
from medformer.data.transforms import ViewConfig, eval_transform
from medformer.data.transforms.batched import (
    BatchAugment2D,
    BatchAugment3D,
    BatchView2D,
    BatchView3D,
    draw_resized_crop,
    geometry_2d,
)
from medformer.data.transforms.sample_random import SampleRandom, sample_seeds

OFF_2D = ViewConfig(crop_scale_min=1.0, crop_ratio_min=1.0, crop_ratio_max=1.0, hflip=0.0, rotate_degrees=0.0,
                    brightness=0.0, contrast=0.0, blur_p=0.0)
OFF_3D = dataclasses.replace(OFF_2D, crop_scale_min_3d=1.0, flip_3d=0.0, rot90_3d=0.0, rotate_3d_degrees=0.0,
                             intensity_3d=0.0, noise_std_3d=0.0)


def rng(n: int, seed: int = 0, epoch: int = 0, start: int = 0) -> SampleRandom:
    return SampleRandom(sample_seeds(seed, epoch, 7, torch.arange(start, start + n)))


def images(shape, n=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) * 255).to(torch.uint8)


AUGMENTS = [
    ("2d gray", (1, 28, 28), BatchAugment2D(AugmentConfig())),
    ("2d rgb", (3, 28, 28), BatchAugment2D(AugmentConfig())),
    ("2d view gray", (1, 28, 28), BatchView2D(ViewConfig(gamma=0.3, noise_std=0.05))),
    ("2d view rgb", (3, 64, 64), BatchView2D(ViewConfig(saturation=0.4, gray_p=0.3, solarize_p=0.2))),
    ("3d", (1, 16, 16, 16), BatchAugment3D(AugmentConfig())),
    ("3d view", (1, 16, 16, 16), BatchView3D(ViewConfig())),
]


@pytest.mark.parametrize("name,shape,augment", AUGMENTS, ids=[a[0] for a in AUGMENTS])
def test_a_samples_view_is_the_same_in_any_batch(name, shape, augment):
    """The view of sample i depends on (seed, epoch, i) only: alone, in a batch of 32 or in another
    order it is the same; another epoch draws another one."""
    x = images(shape)
    full = augment(x, rng(32))
    part = augment(x[10:14], rng(4, start=10))
    torch.testing.assert_close(part, full[10:14], atol=1e-5, rtol=0)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    shuffled = augment(x[order], SampleRandom(sample_seeds(0, 0, 7, order)))
    torch.testing.assert_close(shuffled, full[order], atol=1e-5, rtol=0)
    assert full.shape == x.shape and full.dtype == torch.float32
    assert full.min() >= -1 and full.max() <= 1
    assert not torch.allclose(augment(x, rng(32, epoch=1)), full)


def test_resized_crop_draws_lie_in_the_configured_scale_and_ratio():
    start, frac = draw_resized_crop(rng(2000), (28, 28), (0.4, 1.0), (3 / 4, 4 / 3))
    area, ratio = frac[:, 0] * frac[:, 1], frac[:, 0] / frac[:, 1]
    assert area.min() >= 0.4 - 1e-5 and area.max() <= 1 + 1e-5
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert (start >= 0).all() and (start + frac * 28 <= 28 + 1e-4).all()
    assert area.std() > 0.1 and torch.log(ratio).std() > 0.05  # spread over the range, not a constant
    # the crop itself: a ramp image cropped then resized keeps its values inside the crop box
    x = torch.linspace(0, 1, 28).expand(1, 1, 28, 28).repeat(8, 1, 1, 1)
    view = BatchView2D(dataclasses.replace(OFF_2D, crop_scale_min=0.4, crop_ratio_min=3 / 4, crop_ratio_max=4 / 3))
    out = view(x, rng(8)) * 0.5 + 0.5
    start, frac = draw_resized_crop(rng(8), (28, 28), (0.4, 1.0), (3 / 4, 4 / 3))
    lo = (start[:, 0]) / 27
    hi = (start[:, 0] + frac[:, 0] * 28) / 27
    assert (out.amin((1, 2, 3)) >= lo - 0.05).all() and (out.amax((1, 2, 3)) <= hi + 0.05).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_flips_happen_at_the_configured_rate_and_are_exact(channels):
    x = images((channels, 28, 28), n=400)
    out = BatchView2D(dataclasses.replace(OFF_2D, hflip=0.3))(x, rng(400))
    plain = x.float() / 255 * 2 - 1
    flipped = (out - plain.flip(-1)).abs().amax((1, 2, 3)) < 1e-5
    same = (out - plain).abs().amax((1, 2, 3)) < 1e-5
    assert (flipped | same).all()
    assert abs(flipped.float().mean().item() - 0.3) < 0.07


def test_rotation_angles_stay_within_the_configured_degrees():
    maps = geometry_2d(rng(1000), (28, 28), (1.0, 1.0), (1.0, 1.0), 0.0, 0.0, 15.0)
    angle = torch.rad2deg(torch.atan2(maps[:, 1, 0], maps[:, 0, 0]))
    assert angle.abs().max() <= 15 + 1e-4 and angle.abs().max() > 13 and angle.std() > 5


@pytest.mark.parametrize("channels", [1, 3])
def test_brightness_and_contrast_change_each_image_within_range(channels):
    x = torch.full((500, channels, 8, 8), 128, dtype=torch.uint8)
    view = BatchView2D(dataclasses.replace(OFF_2D, brightness=0.3, color_jitter_p=1.0))
    ratio = (view(x, rng(500)) * 0.5 + 0.5).mean((1, 2, 3)) / (128 / 255)
    assert ratio.min() >= 0.7 - 1e-4 and ratio.max() <= 1.3 + 1e-4 and ratio.std() > 0.1
    jitter_off = BatchView2D(dataclasses.replace(OFF_2D, brightness=0.3, color_jitter_p=0.4))
    changed = ((jitter_off(x, rng(500)) * 0.5 + 0.5).mean((1, 2, 3)) - 128 / 255).abs() > 1e-4
    assert abs(changed.float().mean().item() - 0.4) < 0.07


def test_3d_flips_turns_and_intensity_follow_the_config():
    x = images((1, 8, 8, 8), n=300)
    plain = x.float() / 255 * 2 - 1
    flips = BatchView3D(dataclasses.replace(OFF_3D, flip_3d=0.5))(x, rng(300))
    axes = [(flips - plain.flip(a)).abs().amax((1, 2, 3, 4)) < 1e-5 for a in (2, 3, 4)]
    assert all(abs(hit.float().mean().item() - 0.125) < 0.06 for hit in axes)  # that axis alone flipped
    turned = BatchView3D(dataclasses.replace(OFF_3D, rot90_3d=1.0))(x, rng(300))
    candidates = [torch.rot90(plain, k, plane) for plane in ((2, 3), (2, 4), (3, 4)) for k in (1, 2, 3)]
    exact = torch.stack([(turned - c).abs().amax((1, 2, 3, 4)) < 1e-5 for c in candidates]).any(0)
    assert exact.all()
    flat = torch.full((300, 1, 4, 4, 4), 128, dtype=torch.uint8)
    out = BatchView3D(dataclasses.replace(OFF_3D, intensity_3d=0.2))(flat, rng(300)) * 0.5 + 0.5
    change = out.mean((1, 2, 3, 4)) - 128 / 255
    # x (1 + a) + b with a, b in +-0.2 at x = 0.5: within +-0.3
    assert change.abs().max() <= 0.3 + 1e-4 and change.std() > 0.05


def test_3d_small_rotations_keep_the_volume_in_place_and_within_degrees():
    x = torch.zeros(50, 1, 16, 16, 16, dtype=torch.uint8)
    x[:, :, 6:10, 6:10, 6:10] = 255  # a centred cube stays centred under rotations about the centre
    out = BatchAugment3D(AugmentConfig(flip_3d=0, rot90_3d=0, intensity_3d=0, rotate_3d_degrees=10))(x, rng(50))
    mass = out * 0.5 + 0.5
    grid = torch.arange(16).float()
    centre = (mass.sum((1, 3, 4)) * grid).sum(1) / mass.sum((1, 2, 3, 4))
    assert (centre - 7.5).abs().max() < 0.2
    assert not torch.allclose(out, x.float() / 255 * 2 - 1)


def test_bad_augmentation_settings_stop_with_the_key_named():
    for override, key in [("views.crop_scale_min=1.5", "views.crop_scale_min"), ("views.blur_p=-0.1", "views.blur_p"),
                          ("views.rotate_3d_axes=4", "views.rotate_3d_axes")]:
        with pytest.raises(ConfigError, match=key):
            load_config(PretrainConfig, None, [override])
    with pytest.raises(ConfigError, match="augment.hflip"):
        from medformer.config import FinetuneConfig

        load_config(FinetuneConfig, None, ["augment.hflip=1.2"])


def test_views_may_be_a_list_one_entry_per_view(tmp_path):
    path = tmp_path / "byol.yaml"
    path.write_text("views:\n  - {blur_p: 1.0}\n  - {blur_p: 0.1, solarize_p: 0.2}\n")
    cfg = load_config(PretrainConfig, path)
    views = view_list(cfg.views)
    assert [(v.blur_p, v.solarize_p) for v in views] == [(1.0, 0.0), (0.1, 0.2)]
    assert len(view_list(load_config(PretrainConfig, None, ["views.n_views=3"]).views)) == 3
    with pytest.raises(ConfigError, match="solarize_p"):
        load_config(PretrainConfig, None, ["views=[{solarize_p: 2}]"])


def test_bank_batches_equal_the_per_sample_path(shared_root):
    """Without augmentation an ImageBank batch holds the images, labels, indices and targets that
    the per-sample dataset and collate give for the same positions (two datasets, 2D and 3D)."""
    data = DataConfig(root=str(shared_root), datasets=["breastmnist", "adrenalmnist3d"])
    concat = train_dataset(data, lambda dim: eval_transform(), 0)
    assert use_bank(data, concat)
    bank = ImageBank(concat, seed=0)
    positions = [3, 700, 12, 546 + 5, 0, 546 + 1000]
    batch = DeviceAugment({"2d": None, "3d": None})(bank.__getitems__(positions))
    reference = collate([concat[p] for p in positions])
    assert batch["index"].tolist() == reference["index"].tolist() and batch["dataset"] == reference["dataset"]
    for task in reference["targets"]:
        assert torch.equal(batch["targets"][task], reference["targets"][task])
    got = {tuple(r.tolist()): x for x, r in batch["inputs"].groups}
    for x, rows in reference["inputs"].groups:
        torch.testing.assert_close(got[tuple(rows.tolist())], x)
    assert batch["inputs"].dim == reference["inputs"].dim and batch["inputs"].task == reference["inputs"].task


def test_augment_on_device_needs_the_set_in_memory(shared_root):
    data = DataConfig(root=str(shared_root), datasets=["breastmnist"], augment_on="device", in_memory_gb=1e-4)
    concat = train_dataset(data, lambda dim: eval_transform(), 0)
    with pytest.raises(ConfigError, match="data.in_memory_gb"):
        use_bank(data, concat)
    assert not use_bank(dataclasses.replace(data, augment_on="auto"), concat)  # streams instead
    assert not use_bank(dataclasses.replace(data, augment_on="loader", in_memory_gb=8), concat)


def test_sample_seeds_are_a_pure_function_of_seed_epoch_and_index():
    a = sample_seeds(3, 5, 11, torch.arange(100))
    assert torch.equal(a, sample_seeds(3, 5, 11, torch.arange(100)))
    assert len(set(a.tolist())) == 100
    assert not torch.equal(a, sample_seeds(3, 6, 11, torch.arange(100)))
    u = SampleRandom(a).uniform(1000)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    z = SampleRandom(a).normal((1000,))
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert math.isfinite(z.abs().max().item())
