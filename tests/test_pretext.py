"""Pretext tasks (masked modelling, rotation, jigsaw, context restoration): their transforms, that
masked pixels never reach the encoder, that each loss falls on real 2D and 3D data, alone and
with SSL and pseudo-labels, the run end to end, and bad settings refused before any output.
(Two processes equal one for every task: tests/test_ssl.py, through tests/dist_ssl_check.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from medformer.config import DataConfig, ModelConfig
from medformer.config.pretrain import JigsawConfig, PretextConfig
from medformer.data.batch import make_inputs
from medformer.data.domains import dataset_info
from medformer.data.loaders import train_dataset, train_loader
from medformer.data.transforms import MultiViewTransform, ViewConfig
from medformer.models.factory import create_model
from medformer.objectives.pretext import PRETEXT_TASKS, build_pretext, permutation_set
from medformer.objectives.pretext.base import with_groups
from medformer.objectives.pretext.rotation import rotation_classes
from medformer.objectives.pretext.tiles import merge_tiles, patch_pixels, split_tiles
from medformer.objectives.pretrain import PretrainObjective
from pretrain.__main__ import main as pretrain_main

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO.parent / "shared" / "data" / "medmnist"
MIXED = ["pneumoniamnist", "adrenalmnist3d"]
# the two stride-2 stem convs of medformer_small_stem2: these tests are about the pretext objectives, and
# within the 160 steps below rotation's loss falls to 0.66-0.81 of its start with that stem, 0.83-0.90
# with the default's three-conv stem (seeds 0-2, 2026-12-06)
TINY = {"depth": 1, "hidden_dim": 32, "heads": 2, "latent_dim": 16, "num_latent_tokens": 4, "stem_layers": 2}
TINY_ARGS = [f"model.overrides.{k}={v}" for k, v in TINY.items()]
TASKS = sorted(PRETEXT_TASKS)


def tiny_model(datasets=MIXED) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ModelConfig(overrides=dict(TINY)), [dataset_info(f) for f in datasets], 28)


def objective_for(tasks: list[str], model: torch.nn.Module | None = None, **settings) -> PretrainObjective:
    model = model or tiny_model()
    return PretrainObjective(model, pretext=build_pretext(PretextConfig(tasks=tasks, **settings), model))


def mixed_batch(n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    flags = [MIXED[i % 2] for i in range(n)]
    images = [torch.rand(1, 28, 28, generator=g) if f == MIXED[0] else torch.rand(1, 28, 28, 28, generator=g)
              for f in flags]
    return {"inputs": make_inputs(images, flags), "dataset": flags, "index": torch.arange(n)}


# ------------------------------------------------------------------ the transforms


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 28, 28, 28)])
def test_tiles_round_trip_and_follow_the_patch_token_order(shape):
    x = torch.rand(shape)
    assert torch.equal(merge_tiles(split_tiles(x, 7), 7), x)
    # tile t is the region a patchify conv (kernel = stride = 4) flattens to token t
    n = len(shape) - 2
    conv = (torch.nn.Conv2d if n == 2 else torch.nn.Conv3d)(shape[1], 1, 4, stride=4, bias=False)
    torch.nn.init.ones_(conv.weight)
    with torch.no_grad():
        tokens = conv(x).flatten(2)[:, 0]
    assert torch.allclose(patch_pixels(x, 4).sum(-1), tokens, atol=1e-4)


def test_rotation_classes_are_distinct_quarter_turns():
    model = tiny_model()
    term = build_pretext(PretextConfig(tasks=["rotation"]), model)[0]
    assert len(rotation_classes("2d", None)) == 4 and len(rotation_classes("3d", None)) == 10
    assert len(rotation_classes("3d", ["z"])) == 4
    for dim, shape in (("2d", (1, 1, 28, 28)), ("3d", (1, 1, 28, 28, 28))):
        x = torch.rand(shape)
        turned = [term.transform(dim, x, torch.tensor([c])) for c in range(term.n_classes(dim))]
        assert torch.equal(turned[0], x)  # class 0: unrotated
        assert torch.equal(turned[1], torch.rot90(x, 1, dims=(-2, -1)))  # in-plane quarter turn
        assert all(not torch.equal(a, b) for i, a in enumerate(turned) for b in turned[i + 1:])


def test_jigsaw_permutations_are_far_apart_and_move_the_tiles():
    perms = permutation_set(4, 24)
    assert len({tuple(p) for p in perms}) == 24  # every permutation of 4 tiles
    distances = [(a != b).sum() for i, a in enumerate(perms) for b in perms[i + 1:]]
    assert min(distances) >= 2
    perms_3d = permutation_set(8, 24)
    assert min((a != b).sum() for i, a in enumerate(perms_3d) for b in perms_3d[i + 1:]) >= 4
    term = build_pretext(PretextConfig(tasks=["jigsaw"]), tiny_model())[0]
    x = torch.rand(1, 1, 28, 28)
    label = torch.tensor([5])
    order = term.permutations("2d")[5]
    expected = merge_tiles(split_tiles(x, 2)[:, order], 2)
    assert torch.equal(term.transform("2d", x, label), expected)


# ------------------------------------------------------------------ masked modelling


@pytest.mark.parametrize("task", ["mae", "inpainting"])
def test_pixel_decoders_follow_the_token_grid_of_a_64px_model(task):
    """A model built for 64 px reads 8x8-pixel tokens (its stem's stride-1 layer strides 2): the
    decoder predicts each token's 8x8 pixels, and the loss trains."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(overrides={**TINY, "stem_layers": 3}), [dataset_info("breastmnist")], 64)
    objective = objective_for([task], model)
    objective.train()
    term = objective.pretext[task]
    assert term.patch_size["2d"] == 8 and term.decoder.pixels["2d"].out_features == 3 * 8 * 8
    inputs = make_inputs([torch.rand(1, 64, 64) for _ in range(4)], ["breastmnist"] * 4)
    loss = term(model, inputs, torch.arange(4) * 7919)
    loss.backward()
    assert torch.isfinite(loss) and model.input_adapt.patch_2d.first.weight.grad.abs().sum() > 0


def test_masked_patches_do_not_reach_the_encoder():
    """Changing the pixels of masked patches changes the MAE targets but not one value the
    encoder computes from the visible ones, in 2D and 3D."""
    model = tiny_model()
    objective = objective_for(["mae"], model)
    objective.train()
    term = objective.pretext["mae"]
    batch = mixed_batch()
    seeds = torch.arange(4) * 7919
    other_groups = []
    for _dim, images, rows, rng in term.groups(batch["inputs"], seeds):
        _, _, masked = term.mask(images, rng)
        assert masked.float().mean().item() == pytest.approx(0.75, abs=0.05)
        grid = images.shape[-1] // term.patch_size[_dim]
        n_dims = images.ndim - 2
        pixel_mask = masked.reshape(len(images), 1, *[grid] * n_dims)
        for axis in range(2, 2 + n_dims):
            pixel_mask = pixel_mask.repeat_interleave(term.patch_size[_dim], dim=axis)
        other_groups.append((torch.where(pixel_mask, torch.rand_like(images) + 5.0, images), rows))
    other = with_groups(batch["inputs"], other_groups)
    captured, original = [], model.tokens
    model.tokens = lambda *a, **k: captured.append((original(*a, **k), k["keep"])) or captured[-1][0]
    loss_a = term(model, batch["inputs"], seeds)
    loss_b = term(model, other, seeds)
    assert torch.equal(captured[0][0], captured[1][0])  # the body never saw the masked pixels
    assert loss_a.item() != loss_b.item()  # ... which the loss does read, as targets
    # only the visible patch tokens (a quarter of 7x7 and of 7x7x7) enter the Input Adaptformer
    assert {dim: tuple(k.shape) for dim, k in captured[0][1].items()} == {"2d": (2, 12), "3d": (2, 86)}


def test_mask_ratio_bounds_and_cnn_encoders_are_refused(tmp_path, capsys):
    for bad, needle in (("pretext.mae.mask_ratio=1.0", "mask_ratio"), ("pretext.mae.mask_ratio=0", "mask_ratio"),
                        ("model.name=resnet18 model.overrides={}", "only the Medformer")):
        code = pretrain_main(run_args(tmp_path / "run", "pretext.tasks=[mae]", *bad.split()))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ learning on real data


@pytest.fixture(scope="module")
def real_batches():
    """160 batches (16 samples, 2D and 3D mixed) of 128 real images, one view, no augmentation (the
    Medformer learns rotation and jigsaw slowly: ResNet-18 fits jigsaw in a tenth of the steps)."""
    if not all((ROOT / f"{f}.npz").is_file() for f in MIXED):
        pytest.skip(f"real MedMNIST files not found in {ROOT}")
    torch.set_num_threads(1)
    view = ViewConfig(n_views=1, crop_scale_min=1.0, crop_scale_min_3d=1.0, rotate_degrees=0, rotate_3d_degrees=0,
                      rot90_3d=0, hflip=0, flip_3d=0, color_jitter_p=0, blur_p=0, intensity_3d=0, noise_std_3d=0)
    data = DataConfig(root=str(ROOT), datasets=MIXED, max_train_samples=64)
    dataset = train_dataset(data, lambda dim: MultiViewTransform(view, dim), seed=0)
    loader = train_loader(dataset, batch_size=16, seed=0)
    batches: list[dict] = []
    for epoch in range(20):
        dataset.set_epoch(epoch)
        batches += list(loader)
    return batches


@pytest.mark.parametrize("tasks", [[t] for t in TASKS] + [["mae", "rotation"]])
def test_pretext_losses_go_down_on_real_2d_and_3d_batches(tasks, real_batches):
    objective = objective_for(tasks, jigsaw=JigsawConfig(n_permutations=4))  # 24 take longer than a test
    objective.train()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=2e-3, weight_decay=0.0)
    history = []
    for batch in real_batches:
        assert {d for d in batch["views"][0].dim} == {"2d", "3d"}
        losses = objective(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert int(objective.calls) == len(real_batches)
    for name in history[0]:
        series = np.array([h[name] for h in history])
        assert np.isfinite(series).all()
        first, last = series[:16].mean(), series[-16:].mean()
        assert last < 0.9 * first, f"{name}: {first:.4f} -> {last:.4f}: {np.round(series, 3)}"
    assert objective.last_embeddings.shape[0] == 16


def test_pretext_draws_depend_on_the_sample_not_on_the_batch():
    """A sample's mask (or rotation, tiles, corruption) comes from (seed, step, dataset, index):
    the same sample gets the same loss alone or in a larger batch, so processes can split batches."""
    model = tiny_model()
    model.eval()
    for task in TASKS:
        objective = objective_for([task], model)
        objective.eval()
        full = mixed_batch(4)
        per_row = []
        for row in range(4):
            images = [_image(full, row)]
            single = {"inputs": make_inputs(images, [full["dataset"][row]]), "dataset": [full["dataset"][row]],
                      "index": full["index"][row:row + 1]}
            with torch.no_grad():
                per_row.append(objective(single)[PRETEXT_TASKS[task].loss_name].item())
        with torch.no_grad():
            together = objective(full)[PRETEXT_TASKS[task].loss_name].item()
        assert together == pytest.approx(np.mean(per_row), rel=1e-4), task


def _image(batch: dict, row: int) -> torch.Tensor:
    for images, rows in batch["inputs"].groups:
        hit = (rows == row).nonzero()
        if len(hit):
            return images[hit[0, 0]]
    raise KeyError(row)


# ------------------------------------------------------------------ the run


def run_args(out: Path, *more: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "pretrain" / "mae_small.yaml"), *TINY_ARGS, f"data.root={ROOT}",
            f"data.datasets=[{','.join(MIXED)}]", "data.max_train_samples=32", "train.batch_size=16",
            "train.epochs=1", "train.max_steps=4", "train.progress=false", "train.warmup_epochs=0",
            "monitor.every=2", "monitor.knn_every=0", f"output_dir={out}", *more]


@pytest.fixture
def reset_accelerate():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_vicreg_with_pretext_tasks_runs_end_to_end_and_finetune_loads_it(tmp_path, reset_accelerate):
    if not all((ROOT / f"{f}.npz").is_file() for f in MIXED):
        pytest.skip(f"real MedMNIST files not found in {ROOT}")
    out = tmp_path / "run"
    code = pretrain_main(run_args(out, "ssl.method=vicreg", "views.n_views=2", "views.rot90_3d=0",
                                  "pretext.tasks=[mae,rotation,jigsaw,inpainting]", "ssl.vicreg.proj_hidden_dim=32",
                                  "ssl.vicreg.proj_output_dim=16", "loss_weights.mae/mse=2.0"))
    assert code == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["method"] == "vicreg+mae+rotation+jigsaw+inpainting", card["method"]
    assert {"ssl/invariance", "mae/mse", "rotation/ce", "jigsaw/ce", "inpainting/mse"} <= set(card["final_loss"])
    from finetune.__main__ import main as finetune_main

    ft = tmp_path / "ft"
    code = finetune_main(["--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"), *TINY_ARGS,
                          f"data.root={ROOT}", "data.max_train_samples=32", "train.epochs=1", "train.progress=false",
                          "train.eval_test=false", f"init={out}", f"output_dir={ft}"])
    assert code == 0
    report = json.loads((ft / "init_report.json").read_text())
    assert report["missing"] == []


@pytest.mark.parametrize("bad, needle", [
    (["pretext.tasks=[jigsaw]", "pretext.jigsaw.grid=3"], "does not divide"),
    (["data.datasets=[pneumoniamnist]", "pretext.tasks=[rotation]", "pretext.rotation.axes=[x]"], "2D images lack"),
    (["pretext.tasks=[rotation]", "views.rot90_3d=0.5"], "rot90_3d=0"),
    (["pretext.tasks=[mae]", "loss_weights.mae/mse=-1"], ">= 0"),
    (["pretext.tasks=[mae]", "loss_weights.mae/mse=0"], "every loss term"),
    (["pretext.tasks=[mae]", "loss_weights.rotation/ce=1"], "names no loss term"),
    (["pretext.tasks=[mae]", "pretext.jigsaw.grid=4"], "jigsaw"),
    (["pretext.tasks=[mae,mae]"], "twice"),
    (["pretext.tasks=[colorize]"], "colorize"),
    (["pretext.tasks=[inpainting]", "pretext.inpainting.box_min=0.5", "pretext.inpainting.box_max=0.2"], "box_max"),
])
def test_bad_pretext_settings_exit_2_with_one_line_and_write_nothing(bad, needle, tmp_path, capsys, reset_accelerate):
    out = tmp_path / "run"
    code = pretrain_main(run_args(out, *bad))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_a_resumed_pretext_run_equals_the_uninterrupted_one(tmp_path, monkeypatch, reset_accelerate):
    """The pretext draws follow the step counter saved with the checkpoint: the run resumed from
    its epoch-1 checkpoint masks, turns and corrupts what the uninterrupted run did."""
    if not all((ROOT / f"{f}.npz").is_file() for f in MIXED):
        pytest.skip(f"real MedMNIST files not found in {ROOT}")
    import shutil

    from safetensors.torch import load_file

    from medformer.engine.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    save_last = Trainer.save_last

    def save_and_snapshot(self):
        save_last(self)
        if self.output_dir == full and self.state.epoch == 1:
            shutil.copytree(full, part)

    monkeypatch.setattr(Trainer, "save_last", save_and_snapshot)
    more = ["train.epochs=3", "train.max_steps=null", "pretext.tasks=[mae,rotation,inpainting]", "views.rot90_3d=0"]
    assert pretrain_main(run_args(full, *more)) == 0
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert pretrain_main([*run_args(part, *more), f"resume={part}"]) == 0
    a, b = load_file(str(full / "encoder.safetensors")), load_file(str(part / "encoder.safetensors"))
    assert json.loads((part / "train_stats.json").read_text())["steps"] == 12
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
