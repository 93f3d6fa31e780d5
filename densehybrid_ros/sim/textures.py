"""Textures of the sim world, made once per process from scikit-image's real photographs + procedural detail.

pybullet loads textures from files and keeps one copy per textured body, so textures stay at 256^2 and
each file is loaded once per simulation (ids die with `resetSimulation`).
"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SIZE = 256


def _gray(img: np.ndarray) -> np.ndarray:
    g = img.astype(np.float32)
    if g.ndim == 3:
        g = g[..., :3].mean(axis=2)
    g = cv2.resize(g, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return (g - g.mean()) / (g.std() + 1e-6)


@lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {"gravel": _gray(skimage.data.gravel()), "grass": _gray(skimage.data.grass()),
            "brick": _gray(skimage.data.brick())}


def _rgb(base: tuple[int, int, int], detail: np.ndarray, contrast: float) -> np.ndarray:
    img = np.asarray(base, np.float32)[None, None, :] * (1.0 + contrast * detail[..., None])
    return np.clip(img, 0, 255).astype(np.uint8)


def make_textures() -> dict[str, np.ndarray]:
    """name -> (256, 256, 3) uint8 RGB. Colours are near-neutral: bodies tint them with rgbaColor."""
    ph = _photos()
    rng = np.random.default_rng(12345)  # fixed: textures are part of the world, not of a frame
    tex = {
        "asphalt": _rgb((150, 150, 155), ph["gravel"], 0.12),
        "paving": _rgb((205, 200, 195), ph["brick"], 0.10),
        "grass": _rgb((190, 220, 150), ph["grass"], 0.25),
        "brick": _rgb((200, 150, 130), ph["brick"], 0.18),
        "concrete": _rgb((200, 200, 200), ph["gravel"], 0.07),
        "foliage": _rgb((150, 210, 120), ph["grass"], 0.35),
    }
    # Facade: plaster with a 2x2 grid of windows per 256^2 tile (one tile = 3 m x 3 m of wall).
    facade = _rgb((220, 215, 205), ph["gravel"], 0.05).astype(np.float32)
    for cy in (0, 128):
        for cx in (0, 128):
            facade[cy + 30 : cy + 100, cx + 34 : cx + 94] = (70, 85, 100)
            facade[cy + 30 : cy + 100, cx + 62 : cx + 66] = (200, 200, 200)
    tex["facade"] = np.clip(facade + rng.normal(0, 3, facade.shape), 0, 255).astype(np.uint8)
    # Fence: vertical planks.
    planks = _rgb((200, 190, 170), ph["gravel"], 0.05).astype(np.float32)
    planks[:, ::32] *= 0.55
    tex["planks"] = planks.clip(0, 255).astype(np.uint8)
    # Noisy colour blobs for procedural anomalies.
    blobs = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32), (0, 0), 12)
    blobs = (blobs - blobs.mean()) / (blobs.std() + 1e-6)
    tex["blobs"] = np.clip(160 + 60 * blobs, 0, 255).astype(np.uint8)
    stripes = np.full((SIZE, SIZE, 3), 230, np.uint8)
    stripes[(np.arange(SIZE)[:, None] + np.arange(SIZE)[None, :]) // 32 % 2 == 0] = (40, 40, 40)
    tex["stripes"] = stripes
    return tex


class TextureFiles:
    """The textures written as PNG files in a private temporary directory (removed with the object)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="densehybrid_sim_tex_")
        self.paths: dict[str, Path] = {}
        for name, img in make_textures().items():
            path = Path(self._dir.name) / f"{name}.png"
            cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            self.paths[name] = path

    def close(self) -> None:
        self._dir.cleanup()
