"""Tiny SSL heads for any method in tests (a head size the method does not have is left out)."""

from __future__ import annotations

import dataclasses

from medformer.config.pretrain import SSLConfig

HEAD_SIZES = {"proj_hidden_dim", "proj_output_dim", "pred_hidden_dim", "queue_size"}


def tiny_ssl(method: str, **knobs) -> SSLConfig:
    """SSLConfig of `method` with `knobs` set on its settings; head sizes it lacks are skipped, any
    other knob it lacks is an error."""
    cfg = SSLConfig(method=method)
    section = getattr(cfg, method, None)
    if not dataclasses.is_dataclass(section):
        return cfg  # "none" or an unknown method: build_ssl_objective refuses it
    own = {f.name for f in dataclasses.fields(section)}
    return dataclasses.replace(cfg, **{method: dataclasses.replace(section, **{k: v for k, v in knobs.items() if k in own or k not in HEAD_SIZES})})
