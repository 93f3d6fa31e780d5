"""Loader for datasets written by `densehybrid-sim render` (layout in densehybrid_ros/sim/dataset.py).

Kind `sim`; the split is the one recorded in the manifest (a requested split must match it).
`semantic` is in the sim taxonomy (densehybrid_ros.sim.taxonomy), `depth` is planar metres (+inf = sky);
`extras` holds the instance ids and the frame's metadata (camera K/P, mounting, anomalies).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, VOID, DatasetError, EvalSample, register

SIM_FORMAT = "densehybrid-sim"


def _read(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"sim: missing file {path}")
    img = cv2.imread(str(path), flags)
    if img is None:
        raise DatasetError(f"sim: cannot decode {path}")
    return img


class SimDataset:
    kind = "sim"

    def __init__(self, root: Path, split: str | None = None) -> None:
        manifest_path = Path(root) / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(f"sim: {manifest_path} not found (render one with `densehybrid-sim render`)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"sim: {manifest_path} is not valid JSON: {exc}") from None
        if manifest.get("format") != SIM_FORMAT:
            raise DatasetError(f"sim: {manifest_path} has format {manifest.get('format')!r}, expected {SIM_FORMAT!r}")
        if split is not None and split != manifest["split"]:
            raise DatasetError(f"sim: {root} holds split {manifest['split']!r}, not {split!r}")
        self.root = Path(root)
        self.split = manifest["split"]
        self.manifest = manifest
        self.classes = [c["name"] for c in manifest["classes"]]
        self.anomaly_id = int(manifest["anomaly_id"])
        self.ids = list(manifest["frame_ids"])
        self.frames_per_scene = int(manifest.get("config", {}).get("frames_per_scene", 1))

    def group(self, index: int) -> str:
        """The street (sim scene) frame `index` was rendered in: frames of one street share objects, light and
        camera, so bootstrap intervals resample streets, not frames."""
        return f"scene{int(self.ids[index]) // self.frames_per_scene}"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> EvalSample:
        name = self.ids[index]
        r = self.root
        image = _read(r / "rgb" / f"{name}.png", cv2.IMREAD_COLOR)[..., ::-1].copy()
        labels = _read(r / "labels" / f"{name}.png", cv2.IMREAD_UNCHANGED)
        instances = _read(r / "instances" / f"{name}.png", cv2.IMREAD_UNCHANGED)
        depth_path = r / "depth" / f"{name}.npy"
        if not depth_path.is_file():
            raise DatasetError(f"sim: missing file {depth_path}")
        depth = np.load(depth_path, allow_pickle=False)
        meta_path = r / "meta" / f"{name}.json"
        if not meta_path.is_file():
            raise DatasetError(f"sim: missing file {meta_path}")
        meta = json.loads(meta_path.read_text())
        if labels.shape != image.shape[:2] or depth.shape != image.shape[:2] or instances.shape != image.shape[:2]:
            raise DatasetError(f"sim: frame {name}: image {image.shape[:2]}, labels {labels.shape}, depth {depth.shape} "
                               f"and instances {instances.shape} differ in size")
        ood = np.full(labels.shape, OOD_INLIER, np.uint8)
        ood[labels == self.anomaly_id] = OOD_ANOMALY
        ood[labels == VOID] = VOID
        return EvalSample(name=name, image=image, ood=ood, semantic=labels, depth=depth.astype(np.float32),
                          extras={"instances": instances, "meta": meta})


@register("sim")
def open_sim(root: Path, split: str | None) -> SimDataset:
    return SimDataset(root, split)
