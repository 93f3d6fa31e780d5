"""`make demo` until the Demo issue bundles trained weights: build the default CPU model, save it in
the node weights format, load it back through the validating loader, run the Predictor on a generated
road image, and write what came out. The weights are UNTRAINED (random initialisation), so the maps
show the pipeline working, not a useful segmentation; the demo says so in its output."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from densehybrid_ros import __version__
from densehybrid_ros.config import load_yaml
from densehybrid_ros.models import ModelConfig, build_model
from densehybrid_ros.paths import model_config_path
from densehybrid_ros.predictor import Predictor, PredictorConfig
from densehybrid_ros.scores import SCORES, open_set_fusion
from densehybrid_ros.visualize import colorize, heatmap, overlay, palette
from densehybrid_ros.weights import default_metadata, save_weights


def road_image(height: int = 256, width: int = 512, seed: int = 0) -> np.ndarray:
    """A simple generated street view (sky, facades, road with lane marks, verge, a box on the road)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    horizon = height * 9 // 20
    sky = np.linspace((90, 140, 200), (190, 215, 235), horizon).astype(np.uint8)
    image[:horizon] = sky[:, None, :]
    for x0 in range(0, width, width // 8):
        top = int(horizon * rng.uniform(0.2, 0.7))
        shade = int(rng.integers(60, 140))
        image[top:horizon, x0 : x0 + width // 8 - 4] = (shade, shade - 10, shade - 20)
    image[horizon:] = (70, 120, 50)  # verge
    ys = np.arange(horizon, height)[:, None]
    xs = np.arange(width)[None, :]
    half = (ys - horizon + 2) * (width * 0.9) / (height - horizon)
    road = np.abs(xs - width / 2) < half
    image[horizon:][road] = (85, 85, 90)
    dashes = (np.abs(xs - width / 2) < half * 0.02 + 1) & (((ys - horizon) // 6) % 2 == 0)
    image[horizon:][dashes] = (235, 235, 235)
    cy, cx, size = height * 3 // 4, width * 3 // 5, height // 10
    image[cy - size : cy, cx - size : cx + size] = (230, 120, 20)  # the "anomaly": an orange crate
    noise = rng.normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="densehybrid-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--model", default="swiftnet_r18_cpu", help="model preset name or YAML path")
    parser.add_argument("--size", default="512x256", help="generated image WxH")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WxH, got {args.size!r}")
    if width < 32 or height < 32:
        parser.error("--size must be at least 32x32")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    config = load_yaml(ModelConfig, model_config_path(args.model))
    torch.manual_seed(args.seed)
    model = build_model(config).eval()
    metadata = replace(
        default_metadata(config),
        provenance={"trained": False, "note": "random initialisation (demo placeholder until trained weights are bundled)",
                    "seed": args.seed, "code_version": __version__},
    )
    weights = save_weights(out / "untrained.safetensors", model, metadata)

    predictor = Predictor.from_weights(weights, PredictorConfig(extra_scores=tuple(s for s in SCORES if s != "hybrid")))
    image = road_image(height, width, args.seed)
    predictor.predict(image)  # warm-up
    start = time.perf_counter()
    prediction = predictor.predict(image)
    elapsed_ms = (time.perf_counter() - start) * 1e3

    # Uncalibrated weights carry no threshold: for the picture only, mark the top 5% of this image.
    threshold = float(np.quantile(prediction.hybrid, 0.95))
    open_set = open_set_fusion(
        torch.from_numpy(prediction.class_ids), torch.from_numpy(prediction.hybrid), threshold, config.num_classes
    ).numpy()
    table = palette([c.color for c in metadata.classes])
    low, high = np.quantile(prediction.hybrid, [0.01, 0.99])
    panels = {
        "input.png": image,
        "semantic_color.png": colorize(prediction.class_ids, table),
        "anomaly_score.png": heatmap(prediction.hybrid, float(low), float(high) + 1e-6),
        "open_set_overlay.png": overlay(image, open_set, table),
    }
    for name, rgb in panels.items():
        cv2.imwrite(str(out / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / "panels.png"), cv2.cvtColor(np.vstack(list(panels.values())), cv2.COLOR_RGB2BGR))

    summary = {
        "weights": str(weights),
        "weights_trained": False,
        "architecture": config.__dict__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": [width, height],
        "predict_ms": round(elapsed_ms, 1),
        "classes_present": sorted({metadata.classes[i].name for i in np.unique(prediction.class_ids)}),
        "hybrid_score_range": [float(prediction.hybrid.min()), float(prediction.hybrid.max())],
        "illustration_threshold_top5pct": threshold,
        "scores": sorted(["hybrid", *prediction.scores]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"densehybrid_ros demo ({__version__})")
    print(f"  built {config.backbone} SwiftNet (backbone width {config.backbone_width}, decoder {config.decoder_width}, "
          f"{summary['parameters'] / 1e6:.2f} M parameters), RANDOM weights: no trained model is bundled yet")
    print(f"  saved and re-loaded them through the validating safetensors loader: {weights}")
    print(f"  ran the Predictor on a generated {width}x{height} road image in {elapsed_ms:.0f} ms (CPU)")
    print(f"  outputs: class ids, hybrid score in [{summary['hybrid_score_range'][0]:.2f}, "
          f"{summary['hybrid_score_range'][1]:.2f}], scores {', '.join(summary['scores'])}")
    print("  open-set overlay marks the image's top 5% hybrid scores (uncalibrated weights have no threshold)")
    print(f"  wrote {', '.join(panels)}, panels.png and summary.json to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
