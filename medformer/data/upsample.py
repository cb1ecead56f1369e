"""Stand-in larger MedMNIST files: the 28 px / 28³ npz upsampled (bilinear / trilinear) to
`{flag}_{size}.npz`, for benchmarks where the official larger files cannot be downloaded. They carry no
detail the 28 px file lacks, and their md5 is not the official one (read them with data.verify_md5=false).

    python scripts/upsample_medmnist.py ../shared/data/medmnist /tmp/size64 --size 64 breastmnist retinamnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .domains import dataset_info


def upsample_images(images: np.ndarray, size: int, dim: str) -> np.ndarray:
    """uint8 [N, H, W(, C)] or [N, D, H, W] -> the same layout at `size` per side."""
    x = torch.from_numpy(images).float()
    if dim == "3d":
        x = F.interpolate(x[:, None], size=(size,) * 3, mode="trilinear", align_corners=False)[:, 0]
    else:
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x[:, 0] if images.ndim == 3 else x.permute(0, 2, 3, 1)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def upsample_npz(src: Path, dst: Path, flag: str, size: int) -> Path:
    """`src/{flag}.npz` -> `dst/{flag}_{size}.npz` (labels unchanged), written atomically."""
    dim = dataset_info(flag).dim
    with np.load(src / f"{flag}.npz") as data:
        arrays = {k: upsample_images(data[k], size, dim) if k.endswith("_images") else data[k] for k in data.files}
    out = dst / f"{flag}_{size}.npz"
    tmp = out.with_name(out.name + ".tmp")
    dst.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:  # a file object, so that numpy does not append .npz to the name
        np.savez(f, **arrays)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="folder with the 28 px {flag}.npz files")
    p.add_argument("dst", type=Path, help="folder to write {flag}_{size}.npz to")
    p.add_argument("flags", nargs="+")
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args(argv)
    for flag in a.flags:
        print(upsample_npz(a.src, a.dst, flag, a.size))
