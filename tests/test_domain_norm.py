"""DomainBatchNorm: BatchNorm statistics per modality, shared affine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medformer.data.batch import make_inputs
from medformer.data.domains import dataset_info
from medformer.models.domain_norm import DomainBatchNorm
from medformer.models.medformer import Medformer, medformer_config


def test_one_modality_is_exactly_batchnorm_in_training_and_eval():
    torch.manual_seed(0)
    bn, dbn = torch.nn.BatchNorm2d(8), DomainBatchNorm(8)
    dbn.add_domain("xray")
    for _ in range(3):
        x = torch.randn(16, 8, 5, 5) * 3 + 1
        torch.testing.assert_close(dbn(x, ["xray"] * 16), bn(x))
    torch.testing.assert_close(dbn.domains["xray"].running_var, bn.running_var)
    torch.testing.assert_close(dbn.pooled()[0], bn.running_mean)
    assert dbn.domains["xray"].seen.item() == 48
    bn.eval(), dbn.eval()
    torch.testing.assert_close(dbn(x, ["xray"] * 16), bn(x))


def test_each_modality_is_normalised_by_its_own_statistics():
    torch.manual_seed(0)
    dbn = DomainBatchNorm(4)
    for name in ("xray", "ultrasound"):
        dbn.add_domain(name)
    xray, us = torch.randn(6, 4, 3, 3) * 5 + 2, torch.randn(3, 4, 3, 3) * 0.1 - 1
    out = dbn(torch.cat([xray, us]), ["xray"] * 6 + ["ultrasound"] * 3)
    torch.testing.assert_close(out[:6], F.batch_norm(xray, None, None, training=True))
    torch.testing.assert_close(out[6:], F.batch_norm(us, None, None, training=True))
    dbn.eval()
    # an unseen modality in eval falls back to the statistics pooled over all of them
    pooled = dbn(us[:1], ["ct"])
    mean, var = dbn.pooled()
    expected = (us[:1] - mean[:, None, None]) / (var[:, None, None] + 1e-5).sqrt()
    torch.testing.assert_close(pooled, expected)


def test_a_samples_tokens_do_not_depend_on_other_modalities_in_its_training_batch():
    """Medformer with stem_norm=domain_batch: a breast image's tokens in training mode are the same
    whether chest X-rays share its batch or not (with one BatchNorm they are not)."""
    torch.manual_seed(0)
    flags = ["pneumoniamnist", "breastmnist"]
    breast = [torch.rand(1, 28, 28) for _ in range(4)]
    xray = [torch.rand(1, 28, 28) * 3 for _ in range(4)]
    for norm, independent in (("domain_batch", True), ("batch", False)):
        model = Medformer(medformer_config("medformer_small", depth=1, stem_norm=norm), [dataset_info(f) for f in flags])
        alone = model.encode(make_inputs(breast, ["breastmnist"] * 4))
        mixed = model.encode(make_inputs(breast + xray, ["breastmnist"] * 4 + ["pneumoniamnist"] * 4))
        assert torch.allclose(alone, mixed[:4], atol=1e-5) == independent


def _trained(model: Medformer, flags: list[str]) -> Medformer:
    """A few training-mode passes, so that the stem's running statistics are not the initial ones."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.encode(make_inputs([torch.rand(1, 28, 28) * (1 + i) for i in range(len(flags))], flags))
    return model.eval()


def test_an_encoder_with_a_batchnorm_stem_loads_and_encodes_the_same(tmp_path):
    """Encoders saved when medformer_small's stem had one BatchNorm load into the default."""
    from medformer.models.weights import load_weights, save_weights

    torch.manual_seed(0)
    infos = [dataset_info("pneumoniamnist")]
    old = _trained(Medformer(medformer_config("medformer_small", stem_norm="batch"), infos), ["pneumoniamnist"] * 4)
    save_weights(old, tmp_path / "encoder.safetensors")
    new = Medformer(medformer_config("medformer_small"), infos)
    report = load_weights(new, tmp_path / "encoder.safetensors")
    assert not report["missing"] and not report["unexpected"]
    inputs = make_inputs([torch.rand(1, 28, 28) for _ in range(3)], ["pneumoniamnist"] * 3)
    torch.testing.assert_close(new.eval().encode(inputs), old.encode(inputs))


def test_a_checkpoints_modalities_come_along_and_a_new_one_starts_from_the_pooled_statistics(tmp_path):
    from medformer.models.weights import load_weights, save_weights

    torch.manual_seed(0)
    flags = ["pneumoniamnist", "breastmnist"]
    pretrained = _trained(Medformer(medformer_config("medformer_small"), [dataset_info(f) for f in flags]), flags * 2)
    save_weights(pretrained, tmp_path / "encoder.safetensors")
    model = Medformer(medformer_config("medformer_small"), [dataset_info("pneumoniamnist"), dataset_info("retinamnist")])
    load_weights(model, tmp_path / "encoder.safetensors")
    norm, source = model.input_adapt.patch_2d.layers[1], pretrained.input_adapt.patch_2d.layers[1]
    assert set(norm.domains) == {"xray", "ultrasound", "fundus"}
    for name in ("xray", "ultrasound"):
        torch.testing.assert_close(norm.domains[name].running_var, source.domains[name].running_var)
    torch.testing.assert_close(norm.domains["fundus"].running_mean, source.pooled()[0])
    assert not torch.allclose(source.domains["xray"].running_mean, source.domains["ultrasound"].running_mean)


def test_single_modality_training_is_bit_identical_to_the_batchnorm_stem():
    """What single-task runs measured with the one-BatchNorm stem holds for the default: same
    draws, same steps, same weights."""
    flags = ["pneumoniamnist"] * 8
    images = [torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    weights = {}
    for norm in ("batch", "domain_batch"):
        torch.manual_seed(0)
        model = Medformer(medformer_config("medformer_small", depth=1, stem_norm=norm), [dataset_info("pneumoniamnist")])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            model(make_inputs(images, flags))["pneumoniamnist"].logsumexp(1).mean().backward()
            optimizer.step()
        weights[norm] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights["batch"], weights["domain_batch"], strict=True))
