"""Medformer: mixed 2D/3D batches, representation, sizes, and per-dataset extensibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medformer.data.batch import make_inputs
from medformer.data.domains import MEDMNIST, dataset_info
from medformer.data.synthetic import synthetic_info
from medformer.models.medformer import (
    Medformer,
    backbone_shapes,
    count_parameters,
    medformer_config,
)

FLAGS = ["pneumoniamnist", "retinamnist", "adrenalmnist3d", "chestmnist"]


def tiny(**kw):
    return Medformer(medformer_config("medformer_small", depth=1, **kw), [dataset_info(f) for f in FLAGS])


def mixed_inputs():
    imgs = [torch.rand(1, 28, 28), torch.rand(3, 28, 28), torch.rand(1, 28, 28, 28), torch.rand(1, 28, 28), torch.rand(1, 28, 28, 28)]
    return make_inputs(imgs, ["pneumoniamnist", "retinamnist", "adrenalmnist3d", "chestmnist", "adrenalmnist3d"])


def test_mixed_2d_3d_batch_one_forward_pass_and_backward():
    torch.manual_seed(0)
    model = tiny()
    inputs = mixed_inputs()
    out = model(inputs)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "pneumoniamnist": (1, 1), "retinamnist": (1, 4), "adrenalmnist3d": (2, 1), "chestmnist": (1, 14)
    }
    sum(v.sum() for v in out.values()).backward()
    for stem in (model.input_adapt.patch_2d, model.input_adapt.patch_3d):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem.parameters())
    assert model.encode(inputs).shape == (5, 128)


def test_sample_output_does_not_depend_on_batch_composition():
    torch.manual_seed(0)
    model = tiny().eval()
    inputs = mixed_inputs()
    together = model.encode(inputs)
    for row in range(len(inputs)):
        alone = model.encode(inputs.select(torch.tensor([row])))
        torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=1e-5)


def test_image_input_norm_ignores_each_images_brightness_and_contrast():
    torch.manual_seed(0)
    imgs = [torch.rand(1, 28, 28), torch.rand(3, 28, 28), torch.rand(1, 28, 28, 28)]
    flags = ["pneumoniamnist", "retinamnist", "adrenalmnist3d"]
    rescaled = [x * scale + shift for x, scale, shift in zip(imgs, (0.5, 2.0, 0.3), (0.2, -0.4, 0.6), strict=True)]
    for norm, invariant in (("image", True), ("none", False)):
        model = tiny(input_norm=norm).eval()
        a, b = model.encode(make_inputs(imgs, flags)), model.encode(make_inputs(rescaled, flags))
        assert torch.allclose(a, b, atol=1e-4) == invariant


def test_domain_latents_change_the_representation():
    torch.manual_seed(0)
    model = tiny().eval()
    img = torch.rand(1, 28, 28)
    a = model.encode(make_inputs([img], ["pneumoniamnist"]))
    b = model.encode(make_inputs([img], ["pneumoniamnist"], modality=["ct"], body_part=["abdomen"]))
    assert not torch.allclose(a, b)


def test_adding_a_dataset_adds_latents_and_head_only():
    torch.manual_seed(0)
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backbone = set(model.backbone_parameter_names())
    new = synthetic_info("toy_mri_knee", "3d", "multi-class", 6, 1, modality="mri", body_part="knee")
    model.add_dataset(new)
    after = dict(model.named_parameters())
    added = set(after) - set(before)
    assert added == {
        "input_adapt.modality_latents.mri", "input_adapt.body_part_latents.knee",
        "output_adapt.task_latents.toy_mri_knee", "output_adapt.heads.toy_mri_knee.weight",
        "output_adapt.heads.toy_mri_knee.bias",
    }
    assert set(model.backbone_parameter_names()) == backbone
    for n in before:
        assert torch.equal(before[n], after[n])
    out = model(make_inputs([torch.rand(1, 28, 28, 28)], ["toy_mri_knee"]))
    assert out["toy_mri_knee"].shape == (1, 6)


def test_unknown_domain_latent_gives_clear_error():
    model = tiny()
    with pytest.raises(KeyError, match="no modality latent"):
        model(make_inputs([torch.rand(1, 28, 28)], ["pneumoniamnist"], modality=["pet"]))


def test_other_input_sizes_interpolate_position_embeddings():
    model = tiny().eval()
    out = model(make_inputs([torch.rand(1, 64, 64), torch.rand(1, 64, 64, 64)], ["pneumoniamnist", "adrenalmnist3d"]))
    assert set(out) == {"pneumoniamnist", "adrenalmnist3d"}


def test_every_medmnist_dataset_has_a_head_of_the_right_width():
    model = Medformer(medformer_config("medformer_small", depth=1), list(MEDMNIST.values()))
    for flag, info in MEDMNIST.items():
        expected = {"binary-class": 1, "ordinal-regression": info.n_classes - 1}.get(info.task, info.n_classes)
        assert model.output_adapt.heads[flag].out_features == expected


@pytest.mark.parametrize("suffix", ["", "_thesis"])
def test_sizes_keep_the_thesis_body(suffix):
    small, large = medformer_config("medformer_small" + suffix), medformer_config("medformer_large" + suffix)
    assert (small.hidden_dim, small.depth, small.heads, small.mlp_ratio, small.patch_size, small.latent_dim, small.num_latent_tokens) == (128, 4, 4, 2.0, 4, 64, 32)
    assert (large.hidden_dim, large.depth, large.heads, large.mlp_ratio, large.patch_size, large.latent_dim, large.num_latent_tokens) == (512, 6, 8, 4.0, 16, 256, 512)
    n_small = count_parameters(Medformer(small, [dataset_info("pneumoniamnist")]))
    assert 0.5e6 < n_small < 1.5e6
    assert (small.stem, large.stem) == (("patch", "patch") if suffix else ("conv", "conv"))
    # the default sizes read volumes by patchify, the thesis sizes too
    assert Medformer(small).input_adapt.patch_3d.__class__ is torch.nn.Conv3d


def test_an_unknown_stem_stops_with_the_key():
    from medformer.config import ConfigError, ModelConfig
    from medformer.models.build import check_model

    with pytest.raises(ConfigError, match="model.overrides.stem_3d"):
        check_model(ModelConfig(name="medformer_small", overrides={"stem_3d": "cnn"}))


@pytest.mark.parametrize("name", ["medformer_small", "medformer_small_stem2", "medformer_small_thesis", "medformer_small_conv3d"])
def test_every_stem_reads_pixels_onto_the_patch_grid(name):
    """Thesis patchify and conv stem give one token per 4x4 patch, 2D and 3D; a gray image reads as
    the same image replicated to RGB."""
    torch.manual_seed(0)
    model = Medformer(medformer_config(name), [dataset_info("pneumoniamnist")]).eval()
    adapter = model.input_adapt
    assert adapter.patch_tokens(torch.rand(2, 3, 28, 28)).shape == (2, 49, 128)
    assert adapter.patch_tokens(torch.rand(2, 1, 28, 28, 28)).shape == (2, 343, 128)
    gray = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(adapter.patch_tokens(gray), adapter.patch_tokens(gray.expand(-1, 3, -1, -1)))


def test_a_model_built_for_64px_reads_8px_tokens_with_the_28px_weights():
    """Above stem_full_res_max the conv stem's stride-1 layer strides 2: 64 px images reach the body
    as 8x8 tokens (volumes, read by patchify, keep 4-voxel patches), with the 28 px model's weights
    but for the position embeddings. An encoder of another grid (another size, or 64 px with 16x16
    tokens as before the rule) stops with a message that says what to set."""
    small = Medformer(medformer_config("medformer_small"), [dataset_info("breastmnist")])
    big = Medformer(medformer_config("medformer_small", image_size_2d=64, image_size_3d=64), [dataset_info("breastmnist")])
    assert big.input_adapt.patch_size == {"2d": 8, "3d": 4} and small.input_adapt.patch_size == {"2d": 4, "3d": 4}
    assert big.input_adapt.patch_tokens(torch.rand(2, 1, 64, 64), ["ultrasound"] * 2).shape == (2, 64, 128)
    assert big.input_adapt.patch_tokens(torch.rand(2, 1, 64, 64, 64)).shape == (2, 16**3, 128)
    assert backbone_shapes(big.state_dict()) == backbone_shapes(small.state_dict())
    full = Medformer(medformer_config("medformer_small", image_size_2d=64, stem_full_res_max=64), [dataset_info("breastmnist")])
    assert full.input_adapt.patch_tokens(torch.rand(2, 1, 64, 64), ["ultrasound"] * 2).shape == (2, 256, 128)
    assert big.checkpoint_mismatch(big.state_dict()) is None
    for other in (small, full):
        reason = big.checkpoint_mismatch(other.state_dict())
        assert "data.size" in reason and "stem_full_res_max=64" in reason


def test_stems_are_called_once_per_dim_on_a_mixed_batch():
    """Gray and RGB 2D images go through the 2D stem in one call (synced BatchNorm needs the same
    calls on every process), and each sample's output is what it gets alone."""
    torch.manual_seed(0)
    model = tiny()
    calls = []
    model.input_adapt.patch_2d.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    inputs = mixed_inputs()
    model(inputs)
    assert calls == [(3, 3, 28, 28)]
    model.eval()
    together = model.encode(inputs)
    for row in range(len(inputs)):
        torch.testing.assert_close(model.encode(inputs.select(torch.tensor([row])))[0], together[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("old", ["medformer_small_thesis", "medformer_small_conv3d", "medformer_small_stem2"])
def test_encoder_of_another_size_fails_with_the_name_to_use(tmp_path, old):
    """Encoders saved before medformer_small gained its conv stem (thesis), before it read volumes
    by patchify (conv3d), or before its stride-1 stem layer (stem2), load by that name; into the new default they fail with one line naming it."""
    from medformer.models.weights import CheckpointError, load_weights, save_weights

    infos = [dataset_info("pneumoniamnist")]
    save_weights(Medformer(medformer_config(old), infos), tmp_path / "old.safetensors")
    with pytest.raises(CheckpointError, match=f"model.name={old}$") as err:
        load_weights(Medformer(medformer_config("medformer_small"), infos), tmp_path / "old.safetensors")
    assert "\n" not in str(err.value)
    report = load_weights(Medformer(medformer_config(old), infos), tmp_path / "old.safetensors")
    assert not report["missing"] and not report["unexpected"]


def test_real_batches_train_forward_backward(shared_root):
    from medformer.data.medmnist import MedMNISTDataset

    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for flag in ("pneumoniamnist", "adrenalmnist3d"):
        ds = MedMNISTDataset(flag, "train", root=shared_root)
        items = [ds[i] for i in range(16)]
        inputs = make_inputs([it["image"] for it in items], [flag] * 16)
        y = torch.stack([it["label"] for it in items]).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs)[flag].reshape(-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert np.isfinite(loss.item())


def test_xformers_without_kernels_falls_back_to_sdpa_once(monkeypatch):
    """An xformers wheel built for another torch imports but has no CUDA kernels: attention must
    warn once, switch to SDPA for the rest of the process and give SDPA's result."""
    import torch.nn.functional as F

    import medformer.models.attention as attention_module

    calls = []

    class NoKernels:
        @staticmethod
        def memory_efficient_attention(q, k, v, p=0.0):
            calls.append(q.shape)
            raise NotImplementedError("No operator found for `memory_efficient_attention_forward`\nmore")

    monkeypatch.setattr(attention_module, "xops", NoKernels)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    with pytest.warns(UserWarning, match="xformers cannot run this attention"):
        assert attention_module.xformers_attention(q, k, v, 0.0) is None
    assert attention_module.xops is None and len(calls) == 1
    torch.testing.assert_close(attention_module.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    """model.grad_checkpointing recomputes activations in the backward pass: same gradients and
    BatchNorm statistics, 2D and 3D."""
    from medformer.config import ModelConfig
    from medformer.models.factory import create_model

    infos = [dataset_info("breastmnist"), dataset_info("adrenalmnist3d")]
    inputs = make_inputs([torch.rand(1, 28, 28), torch.rand(1, 28, 28, 28)], ["breastmnist", "adrenalmnist3d"])
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = create_model(ModelConfig(overrides={"depth": 2}, grad_checkpointing=enabled), infos, 28).train()
        assert model.grad_checkpointing is enabled
        out = model(inputs)
        sum(v.sum() for v in out.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1].update({n: b.clone() for n, b in model.named_buffers()})  # BatchNorm statistics, updated once
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)
