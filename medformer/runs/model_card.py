"""The model card a pretraining run writes beside its encoder: what was trained, on what, how far."""

from __future__ import annotations

import platform
from datetime import datetime, timezone

import torch

from ..config import to_dict
from ..config.pretrain import PretrainConfig
from ..data.domains import dataset_info
from ..engine.trainer import Trainer
from ..eval.pretrain_monitor import PretrainMonitor

ENCODER_FILE = "encoder.safetensors"


def method_name(cfg: PretrainConfig) -> str:
    """The run's terms joined by +: vicreg, pseudolabel, mae, vicreg+pseudolabel+mae, ..."""
    parts = [cfg.ssl.method] if cfg.ssl.method != "none" else []
    return "+".join(parts + (["pseudolabel"] if cfg.pseudolabel.labels else []) + list(cfg.pretext.tasks))


def model_card(cfg: PretrainConfig, trainer: Trainer, monitor: PretrainMonitor, n_samples: dict[str, int]) -> dict:
    st = trainer.state
    return {
        "kind": "medformer pretrained encoder",
        "method": method_name(cfg),
        "weights": ENCODER_FILE,
        "model": {"name": cfg.model.name, "overrides": cfg.model.overrides,
                  "embed_dim": int(getattr(trainer.model, "embed_dim", 0))},
        "datasets": {flag: {"dim": dataset_info(flag).dim, "train_images": n} for flag, n in n_samples.items()},
        "image_size": cfg.data.size,
        "steps": st.step,
        "epochs_completed": st.epoch,
        "samples_seen": st.samples_seen,
        "train_seconds": round(st.train_seconds, 1),
        "samples_per_second": round(st.samples_seen / st.train_seconds, 1) if st.train_seconds else None,
        "stopped_by_time_budget": trainer.stopped_by_time,
        "final_loss": monitor.recent_losses(),
        "embedding": monitor.update_embedding(st.step),
        "knn": monitor.knn_metrics,
        "num_processes": trainer.acc.num_processes,
        "device": str(trainer.acc.device),
        "torch": torch.__version__,
        "host": platform.node(),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "use": "finetune ... init=<this folder> (loads encoder.safetensors)",
        "config": to_dict(cfg),
    }


def card_markdown(card: dict) -> str:
    lines = [
        f"# medformer encoder: {card['method']} on {', '.join(card['datasets'])}",
        "",
        f"- model: `{card['model']['name']}` {card['model']['overrides'] or ''} (embedding dim {card['model']['embed_dim']})",
        f"- weights: `{card['weights']}` (state_dict of the encoder model, domain latents included)",
        f"- training: {card['steps']} steps, {card['samples_seen']} samples seen, {card['train_seconds']} s "
        f"({card['samples_per_second']} img/s) on {card['num_processes']} x {card['device']}, torch {card['torch']}"
        + (" (stopped by the time budget)" if card["stopped_by_time_budget"] else ""),
        "",
        "| dataset | dim | train images |",
        "|---|---|---|",
        *[f"| {flag} | {d['dim']} | {d['train_images']} |" for flag, d in card["datasets"].items()],
        "",
        "Final loss terms (mean of the last steps): "
        + (", ".join(f"`{k}` {v:.4f}" for k, v in card["final_loss"].items()) or "n/a"),
        "",
        "Embedding health: " + (", ".join(f"{k} {v:.4g}" for k, v in card["embedding"].items()) or "n/a"),
        "",
        "Online kNN: " + (", ".join(f"{k} {v:.4f}" for k, v in card["knn"].items()) or "n/a"),
        "",
        f"Use: {card['use']}. Full config in model_card.json.",
        "",
    ]
    return "\n".join(lines)
