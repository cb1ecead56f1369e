"""The one training loop: supervised, multi-task, SSL and pseudo-label objectives alike.

An objective is an nn.Module whose forward(batch) returns named losses; the engine sums them
with configured weights, steps AdamW with a warmup schedule, evaluates, checkpoints and resumes.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, gather_object
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from ..config import ConfigError, Schedule, TrainConfig
from ..errors import UserError
from ..models.weights import CheckpointError, load_weights, save_weights
from .checkpoint import swap_dir

STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"
EMA_FILE = "ema.safetensors"


class NonFiniteLossError(UserError):
    """Raised when a loss becomes NaN or inf (too high a learning rate, bad inputs); checkpoints
    written before it are kept."""


def make_accelerator(train: TrainConfig, output_dir: str | Path, log: bool = True) -> Accelerator:
    """Accelerator with mixed precision bf16 on CUDA / fp32 on CPU (unless set) and TensorBoard."""
    precision = train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # without it torchrun on CPU is not seen as MULTI_CPU
        mixed_precision=precision,
        gradient_accumulation_steps=train.grad_accum,
        log_with="tensorboard" if log else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # multi-task batches may miss a task, leaving its head without gradient
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons, so that the next run in this process builds its
    own Accelerator (study cells in one process, benchmarks that run several trainings)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def per_process_batch(train: TrainConfig, num_processes: int) -> int:
    """train.global_batch_size / num_processes when a global batch is set, else train.batch_size; a
    one-line ConfigError when the processes of the launch do not divide the global batch."""
    if train.global_batch_size is None:
        return train.batch_size
    if train.global_batch_size % num_processes:
        raise ConfigError(f"train.global_batch_size={train.global_batch_size} does not split over the {num_processes} "
                          "processes of this launch (nodes x processes per node): choose a multiple of "
                          f"{num_processes}, or set train.batch_size per process instead")
    return train.global_batch_size // num_processes


def check_train_config(train: TrainConfig) -> None:
    """Reject schedule settings that cannot work (called before a run writes anything)."""
    if train.schedule not in get_args(Schedule):
        raise ConfigError(f"train.schedule must be one of {', '.join(get_args(Schedule))}, got {train.schedule!r}")
    if train.schedule_by not in ("steps", "time"):
        raise ConfigError(f"train.schedule_by must be steps or time, got {train.schedule_by!r}")
    if train.schedule_by == "time" and train.max_minutes is None:
        raise ConfigError("train.schedule_by=time needs a budget: set train.max_minutes (or ssl.max_minutes)")


def resolve_epochs(train: TrainConfig, n_train: int, n_datasets: int = 1) -> None:
    """Turn `epochs: auto` into ceil(auto_samples x n_datasets / n_train) epochs, in place."""
    if train.epochs == "auto":
        train.epochs = max(1, math.ceil(train.auto_samples * n_datasets / max(1, n_train)))


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at each optimizer step: linear warmup, then cosine, flat, or
    multistep (x0.1 at 50% and again at 75% of the steps after warmup, MedMNIST's protocol)."""

    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "multistep":
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_optimizer(
    module: nn.Module, train: TrainConfig, total_steps: int, warmup_steps: int,
    lr_scale: Callable[[str], float] | None = None,
):
    """AdamW without weight decay on norms, biases, latents and position embeddings.

    `lr_scale(name) -> factor` (optional) gives parameters their own LR (layer-wise decay): one
    group per (weight decay, factor), largest factor first.
    """
    groups: dict[tuple[bool, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim <= 1 or "latent" in name or "pos_" in name
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        groups.setdefault((flat, scale), []).append(p)
    param_groups = [
        {"params": params, "weight_decay": 0.0 if flat else train.weight_decay, "lr": train.lr * scale, "lr_scale": scale}
        for (flat, scale), params in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0]))
    ]
    if not param_groups:
        raise UserError("no trainable parameters: every parameter is frozen (check finetune_mode)")
    check_train_config(train)
    optimizer = torch.optim.AdamW(param_groups, lr=train.lr)
    if train.schedule == "onecycle":
        total = max(total_steps, 1)
        # OneCycle divides by the length of its warm-up phase: keep it at least 1.5 steps
        pct_start = min(max(min(warmup_steps / total, 0.5), 0.01, 1.5 / total), 0.99)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train.lr, total_steps=total, pct_start=pct_start)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train.schedule, total_steps, warmup_steps))
    return optimizer, scheduler


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainerState:
    epoch: int = 0  # current epoch
    batches_in_epoch: int = 0  # batches of `epoch` already consumed
    step: int = 0  # optimizer steps done
    best_metric: float = -math.inf
    best_epoch: int = -1
    best_at_chance: bool = False  # the best epoch's val predictions had MCC <= 0 on some task
    tested_epoch: int = -1  # the epoch whose weights are in best.safetensors (train.select)
    tested_at_chance: bool = False
    epochs_without_improvement: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0

    def to_json(self) -> str:
        """Valid JSON: a best_metric of -inf (nothing evaluated yet) or NaN is written as null."""
        state = dict(self.__dict__)
        if not math.isfinite(state["best_metric"]):
            state["best_metric"] = None
        return json.dumps(state)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        state = json.loads(text)
        if state.get("best_metric") is None:
            # best_epoch < 0: nothing evaluated yet (-inf); else the first val score was NaN
            state["best_metric"] = -math.inf if state.get("best_epoch", -1) < 0 else math.nan
        return cls(**state)


class Trainer:
    """Owns the loop. Hooks: `evaluate(model) -> {task: metrics}` each epoch, the objective's
    `on_step_end(step, total_steps)` (momentum updates), `step_callback(step, objective)` (monitors),
    `export(model, output_dir)` each epoch on rank 0, `lr_scale(name)` per-parameter LR factors
    (names as in objective.named_parameters()), `epoch_start(epoch, model)` on every rank before
    an epoch's batches are drawn (re-clustering pseudo-labels), `batch_transform(batch)` on each
    batch once it is on the device (augmentation of in-memory batches, medformer.data.bank)."""

    def __init__(
        self,
        train: TrainConfig,
        objective: nn.Module,
        train_loader,
        output_dir: str | Path,
        accelerator: Accelerator,
        loss_weights: dict[str, float] | None = None,
        evaluate: Callable[[nn.Module], dict[str, dict[str, float]]] | None = None,
        export: Callable[[nn.Module, Path], None] | None = None,
        run_config: dict | None = None,
        step_callback: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
        lr_scale: Callable[[str], float] | None = None,
        epoch_start: Callable[[int, nn.Module], None] | None = None,
        batch_transform: Callable[[dict], dict] | None = None,
    ):
        self.cfg = train
        self.acc = accelerator
        self.output_dir = Path(output_dir)
        self.loss_weights = loss_weights or {}
        self.evaluate_fn = evaluate
        self.export_fn = export
        self.step_callback = step_callback  # (step, unwrapped objective) -> scalars to log, on every rank
        self.epoch_start = epoch_start
        self.batch_transform = batch_transform
        if not isinstance(train.epochs, int):
            raise ValueError(f"train.epochs={train.epochs!r}: call resolve_epochs with the training set's size first")
        steps_per_epoch = math.ceil(len(train_loader) / max(1, self.acc.num_processes) / train.grad_accum)
        total = train.epochs * steps_per_epoch
        self.total_steps = min(total, train.max_steps) if train.max_steps else total
        warmup = int(train.warmup_epochs * steps_per_epoch)
        optimizer, scheduler = build_optimizer(
            objective, train, self.total_steps, min(warmup, self.total_steps // 2), lr_scale
        )
        self.objective, self.optimizer, self.train_loader = self.acc.prepare(objective, optimizer, train_loader)
        self.scheduler = scheduler  # saved by us, not register_for_checkpointing (that one unpickles)
        # warmup power 3/4: decay 0.97 at step 100, 0.994 at 1000 (short runs average recent weights)
        self.ema = ModelEmaV3(self.model, train.ema, use_warmup=True, warmup_power=0.75) if train.ema > 0 else None
        self.state = TrainerState()
        self.history: list[dict] = []
        self.stopped_by_time = False
        if self.acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.acc.init_trackers("tb", config=_flat_hparams(run_config or {}))

    # -- properties -------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The unwrapped objective's model (what is evaluated and exported)."""
        return self.acc.unwrap_model(self.objective).model

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated, kept as best and exported: the EMA weights when train.ema > 0."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_dir(self) -> Path:
        return self.output_dir / "checkpoints" / "last"

    # -- checkpoints ------------------------------------------------------------------------------
    def save_last(self) -> None:
        """Accelerate state + scheduler + trainer state into last.tmp, then swapped in by rank 0."""
        tmp = self.last_dir.with_name("last.tmp")
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        if self.acc.is_main_process:
            torch.save(self.scheduler.state_dict(), tmp / SCHEDULER_FILE)
            if self.ema is not None:
                save_weights(self.ema.module, tmp / EMA_FILE)
            (tmp / "history.json").write_text(json.dumps(self.history))
            (tmp / STATE_FILE).write_text(self.state.to_json())  # written last: marks it complete
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            swap_dir(tmp, self.last_dir)
        self.acc.wait_for_everyone()

    def resume(self, run_dir: str | Path) -> None:
        last = Path(run_dir) / "checkpoints" / "last"
        if not (last / STATE_FILE).is_file():
            raise CheckpointError(f"nothing to resume: {last / STATE_FILE} does not exist")
        self.acc.load_state(str(last))
        self.scheduler.load_state_dict(torch.load(last / SCHEDULER_FILE, weights_only=True))
        self.state = TrainerState.from_json((last / STATE_FILE).read_text())
        if self.ema is not None:
            load_weights(self.ema.module, last / EMA_FILE, strict=True)
        history = last / "history.json"
        self.history = json.loads(history.read_text()) if history.is_file() else []

    def save_best(self) -> None:
        if self.acc.is_main_process:
            save_weights(self.eval_model, self.output_dir / "best.safetensors", {"epoch": self.state.epoch})

    # -- loop -------------------------------------------------------------------------------------
    def _train_step(self, batch) -> dict[str, float]:
        with self.acc.accumulate(self.objective):
            losses = self.objective(batch)
            total = sum(self.loss_weights.get(k, 1.0) * v for k, v in losses.items())
            self._check_finite(total, losses)
            self.acc.backward(total)
            if self.acc.sync_gradients and self.cfg.grad_clip > 0:
                self.acc.clip_grad_norm_(self.objective.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            if self.acc.sync_gradients and self.cfg.schedule_by == "steps":
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        out = {f"loss/{k}": v.detach().float().item() for k, v in losses.items()}
        out["loss/total"] = total.detach().float().item()
        return out

    def _main_seconds(self, seconds: float) -> float:
        """Rank 0's training seconds on every rank: time decisions (stop, LR) never differ between
        processes."""
        own = seconds if self.acc.is_main_process else 0.0
        shared = torch.tensor([own], dtype=torch.float64, device=self.acc.device)
        if self.acc.num_processes > 1:
            shared = self.acc.reduce(shared, "sum")
        return shared.item()

    def _schedule_position(self, seconds: float | None) -> int:
        """Where the LR and momentum schedules stand: the optimizer step, or with schedule_by=time
        the same share of total_steps as `seconds` is of the time budget."""
        if self.cfg.schedule_by == "steps":
            return self.state.step
        return min(self.total_steps, int(self.total_steps * seconds / (60 * self.cfg.max_minutes)))

    def _mean_over_processes(self, logs: dict[str, float]) -> dict[str, float]:
        """Each logged loss averaged over the processes that have it (tasks may differ per rank)."""
        if self.acc.num_processes == 1:
            return logs
        everyone = gather_object([logs])
        keys = dict.fromkeys(k for entry in everyone for k in entry)
        return {k: sum(e[k] for e in everyone if k in e) / sum(k in e for e in everyone) for k in keys}

    def _check_finite(self, total: torch.Tensor, losses: dict) -> None:
        bad = (~torch.isfinite(total.detach())).float()
        if self.acc.num_processes > 1:
            bad = self.acc.reduce(bad.reshape(1), "sum")
        if bad.item() > 0:
            values = {k: float(v.detach()) for k, v in losses.items()}
            raise NonFiniteLossError(
                f"loss became non-finite at step {self.state.step} ({values}); {self._saved_checkpoint()}. "
                "Lower train.lr or check the inputs."
            )

    def _saved_checkpoint(self) -> str:
        """What the run leaves to resume from, for the non-finite loss message."""
        state = self.last_dir / STATE_FILE
        if not state.is_file():
            return "no checkpoint was written before it (train.checkpoint_every=N keeps one every N steps)"
        step = TrainerState.from_json(state.read_text()).step
        return f"the last good checkpoint (step {step}) is in {self.last_dir}: continue it with resume={self.output_dir}"

    def fit(self) -> dict:
        """Train to the end (or max_steps), evaluating each epoch; returns the last val metrics."""
        cfg, st = self.cfg, self.state
        log_step = getattr(self.acc.unwrap_model(self.objective), "on_step_end", None)
        bar = tqdm(
            total=self.total_steps, initial=st.step, disable=not (cfg.progress and self.acc.is_main_process),
            desc="train", dynamic_ncols=True,
        )
        last_metrics: dict = {}
        by_time = cfg.schedule_by == "time"
        stop = not by_time and st.step >= self.total_steps
        while (by_time or st.epoch < cfg.epochs) and not stop:
            if self.epoch_start is not None:
                self.epoch_start(st.epoch, self.model)
            self._set_epoch(st.epoch)
            loader = self.train_loader
            if st.batches_in_epoch:
                loader = self.acc.skip_first_batches(self.train_loader, st.batches_in_epoch)
            t0 = time.perf_counter()
            for batch in loader:
                if self.batch_transform is not None:
                    batch = self.batch_transform(batch)
                logs = self._train_step(batch)
                st.batches_in_epoch += 1
                st.samples_seen += _batch_size(batch) * self.acc.num_processes
                if not self.acc.sync_gradients:
                    continue
                st.step += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=st.step)
                seconds = None
                if cfg.max_minutes is not None:
                    seconds = self._main_seconds(st.train_seconds + time.perf_counter() - t0)
                position = self._schedule_position(seconds)
                if cfg.schedule_by == "time":
                    self.scheduler.last_epoch = position - 1  # step() moves it to `position`
                    self.scheduler.step()
                if log_step is not None:
                    log_step(position, self.total_steps)
                if self.step_callback is not None:
                    extra = self.step_callback(st.step, self.acc.unwrap_model(self.objective))
                    if extra:
                        self.acc.log(extra, step=st.step)
                bar.update(1)
                if st.step % cfg.log_every == 0 or st.step == 1:
                    logs = self._mean_over_processes(logs)
                    logs["lr"] = self.scheduler.get_last_lr()[0]
                    self.acc.log(logs, step=st.step)
                    bar.set_postfix(loss=f"{logs['loss/total']:.4f}")
                self.stopped_by_time = seconds is not None and seconds >= 60 * cfg.max_minutes
                if self.stopped_by_time or (cfg.schedule_by == "steps" and st.step >= self.total_steps):
                    stop = True
                    break
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                    st.train_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_last()
            st.train_seconds += time.perf_counter() - t0
            epoch_done = not stop or st.batches_in_epoch >= len(self.train_loader)
            last_metrics = self._end_of_epoch()
            if epoch_done:
                st.epoch += 1
                st.batches_in_epoch = 0
            self.save_last()
            if cfg.early_stopping and st.epochs_without_improvement >= cfg.early_stopping:
                break
        bar.close()
        return last_metrics

    def _end_of_epoch(self) -> dict:
        st = self.state
        record = {"epoch": st.epoch, "step": st.step, "train_seconds": st.train_seconds}
        metrics: dict = {}
        if self.evaluate_fn is not None:
            metrics = self.evaluate_fn(self.eval_model)
            monitored = [monitored_value(m, self.cfg.monitor) for m in metrics.values()]
            score = float(torch.tensor(monitored).nanmean()) if monitored else math.nan
            record["val"] = metrics
            record["val_score"] = score
            self.acc.log({f"val/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()}, step=st.step)
            at_chance = at_chance_level(metrics)
            improved = st.best_epoch < 0 or _improves(at_chance, score, st)
            if improved:
                st.best_metric, st.best_epoch, st.best_at_chance = score, st.epoch, at_chance
                st.epochs_without_improvement = 0
            else:
                st.epochs_without_improvement += 1
            keep = improved
            if self.cfg.select == "last":  # the last epoch, unless it is at chance level and the kept one is not
                keep = st.tested_epoch < 0 or not at_chance or st.tested_at_chance
            if keep:
                st.tested_epoch, st.tested_at_chance = st.epoch, at_chance
                self.save_best()
        else:
            st.tested_epoch = st.epoch
            self.save_best()
        if self.export_fn is not None and self.acc.is_main_process:
            self.export_fn(self.eval_model, self.output_dir)
        self.history.append(record)
        return metrics

    def _set_epoch(self, epoch: int) -> None:
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        dataset = getattr(self.train_loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    def stats(self) -> dict:
        st = self.state
        return {
            "steps": st.step,
            "epochs_completed": st.epoch,
            "best_epoch": st.best_epoch,
            "best_val_score": st.best_metric if math.isfinite(st.best_metric) else None,
            "tested_epoch": st.tested_epoch,
            "train_seconds": round(st.train_seconds, 2),
            "train_samples_per_second": round(st.samples_seen / st.train_seconds, 1) if st.train_seconds else None,
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "num_processes": self.acc.num_processes,
            "device": str(self.acc.device),
            "mixed_precision": self.acc.mixed_precision,
        }

    def close(self) -> None:
        self.acc.end_training()


# what a task without the monitored metric is scored by: segmentation, then regression (higher is better)
OWN_SCORES = ("dice", "r2")


def at_chance_level(metrics: dict[str, dict[str, float]]) -> bool:
    """Whether some task's val predictions are no better than chance at the decision threshold (MCC
    <= 0), as when every image is called the majority class."""
    return any(m.get("mcc", 1.0) <= 0 for m in metrics.values())


def _improves(at_chance: bool, score: float, st: TrainerState) -> bool:
    """An epoch with MCC > 0 on every task beats one at chance level, whatever their monitored scores
    (a best-val-AUC epoch that predicted one class let an AdrenalMNIST3D run end at the prior);
    between two epochs alike, the monitored score decides."""
    if at_chance != st.best_at_chance:
        return not at_chance
    return score > st.best_metric


def monitored_value(metrics: dict[str, float], monitor: str) -> float:
    """The task's `monitor` metric, else its own score (a segmentation task monitored by AUC: Dice)."""
    if monitor in metrics:
        return metrics[monitor]
    return next((metrics[k] for k in OWN_SCORES if k in metrics), math.nan)


def _batch_size(batch: dict) -> int:
    if "index" in batch:
        return len(batch["index"])
    return 0


def _flat_hparams(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            flat[key] = v
        else:
            flat[key] = str(v)
    return flat
