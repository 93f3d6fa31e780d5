"""The evaluation protocol: `evaluate(source, dataset, metrics)` predicts each frame once and feeds every metric; the
standard metrics against sklearn and numpy on hand-made predictions; the recorded-score decoder, the ground-truth
source, the camera mount's sources and the obstacle metric's ground-plane placement against the pinhole formula."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from densehybrid_ros.datasets.base import EvalSample
from densehybrid_ros.evaluation.evaluate import EvalOptions, build_metrics, evaluate
from densehybrid_ros.evaluation.metrics import GROUP, Metric
from densehybrid_ros.predictor import Prediction

CLASSES = ("road", "car", "tree")
K = len(CLASSES)


class Frames:
    """Frames with labels (classes 0..K-1, anomaly K, void 255) in two streets."""

    kind, split, root = "frames", "test", Path(".")
    classes = list(CLASSES)

    def __init__(self, n: int = 5, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.semantic = [rng.integers(0, K, (24, 32)).astype(np.uint8) for _ in range(n)]
        for i, s in enumerate(self.semantic):
            s[5 + i:12 + i, 8:16] = K
            s[0] = 255
        self.images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def group(self, i: int) -> str:
        return f"street{i // 3}"

    def __getitem__(self, i: int) -> EvalSample:
        s = self.semantic[i]
        ood = np.where(s == K, 1, np.where(s == 255, 255, 0)).astype(np.uint8)
        return EvalSample(name=f"f{i}", image=self.images[i], ood=ood, semantic=s.copy())


class MapSource:
    """Hand-made predictions: noisy scores higher on the anomaly, class ids mostly right."""

    num_classes, class_names, scores = K, CLASSES, ("hybrid", "msp")

    def __init__(self, frames: Frames, threshold: float):
        rng = np.random.default_rng(7)
        self.threshold, self.operating_points = threshold, {"tpr95": threshold}
        self.maps = {}
        for i, s in enumerate(frames.semantic):
            hybrid = (rng.normal(0, 1, s.shape) + 2.0 * (s == K)).astype(np.float32)
            msp = rng.random(s.shape).astype(np.float32)
            noise = rng.integers(0, K, s.shape)
            ids = np.where(rng.random(s.shape) < 0.8, np.minimum(s, K - 1), noise).astype(np.uint8)
            self.maps[f"f{i}"] = (hybrid, msp, ids)
        self.calls: list[str] = []

    def predict(self, sample: EvalSample) -> Prediction:
        self.calls.append(sample.name)
        hybrid, msp, ids = self.maps[sample.name]
        return Prediction(class_ids=ids, hybrid=hybrid, open_set=np.where(hybrid >= self.threshold, K, ids),
                          scores={"msp": msp})


class Recorder(Metric):
    def __init__(self, fail_at: str | None = None):
        self.seen: list[tuple[EvalSample, Prediction]] = []
        self.closed, self.fail_at = 0, fail_at

    def update(self, sample: EvalSample, prediction: Prediction) -> None:
        if sample.name == self.fail_at:
            raise RuntimeError("metric failed")
        self.seen.append((sample, prediction))

    def compute(self) -> dict:
        return {"recorded_frames": len(self.seen)}

    def close(self) -> None:
        self.closed += 1


def test_evaluate_predicts_each_frame_once_and_feeds_every_metric():
    frames = Frames()
    source = MapSource(frames, 1.0)
    first, second = Recorder(), Recorder()
    result = evaluate(source, frames, [first, second], progress=False, max_images=4)
    assert source.calls == ["f0", "f1", "f2", "f3"]  # once per frame, in order
    assert result.metrics == {"recorded_frames": 4} and result.subsample == {} and result.examples == []
    for a, b in zip(first.seen, second.seen):
        assert a[0] is b[0] and a[1] is b[1]  # the same sample and prediction for every metric
    assert [s.extras[GROUP] for s, _ in first.seen] == ["street0", "street0", "street0", "street1"]
    assert first.closed == second.closed == 1
    failing = Recorder(fail_at="f2")
    with pytest.raises(RuntimeError, match="metric failed"):
        evaluate(source, frames, [failing], progress=False)
    assert failing.closed == 1  # closed on failure too
    with pytest.raises(ValueError, match=r"scores \['energy'\] were not requested"):
        build_metrics(EvalOptions(scores=("hybrid", "energy")), source, frames)


def test_standard_metrics_against_sklearn_and_numpy():
    frames = Frames()
    t = 1.0
    source = MapSource(frames, t)
    extra = Recorder()
    metrics = build_metrics(EvalOptions(scores=("hybrid", "msp"), bootstrap_resamples=50), source, frames) + [extra]
    result = evaluate(source, frames, metrics, progress=False)
    m = result.metrics
    assert list(m)[:6] == ["dataset", "threshold", "groups", "scores", "paired", "bootstrap"]
    assert m["recorded_frames"] == 5
    assert m["dataset"]["images"] == m["dataset"]["labelled_images"] == m["dataset"]["images_with_anomalies"] == 5
    assert m["threshold"] == t and m["groups"] == 2 and m["bootstrap"]["grouped_by"] == "street"
    labels = np.concatenate([s.ravel() for s in frames.semantic])
    valid = labels != 255
    for name, index in (("hybrid", 0), ("msp", 1)):
        values = np.concatenate([source.maps[f"f{i}"][index].ravel() for i in range(5)])
        a = m["scores"][name]["anomaly"]
        assert a["ap"] == pytest.approx(average_precision_score(labels[valid] == K, values[valid]), abs=1e-9)
        assert a["auroc"] == pytest.approx(roc_auc_score(labels[valid] == K, values[valid]), abs=1e-9)
        assert m["scores"][name]["intervals"]["ap"]["point"] == a["ap"]
        assert list(m["scores"][name]) == ["anomaly", "intervals", "size_bins"]  # no depth: no distance bins
    # hybrid (the first score) minus msp, on the same resampled streets
    paired = m["paired"]
    assert paired["reference"] == "hybrid" and list(paired["differences"]) == ["msp"]
    for key in ("ap", "fpr95", "auroc"):
        d = paired["differences"]["msp"][key]
        assert d["point"] == pytest.approx(m["scores"]["hybrid"]["anomaly"][key] - m["scores"]["msp"]["anomaly"][key])
        assert d["low"] <= d["high"]
    ids = np.concatenate([source.maps[f"f{i}"][2].ravel() for i in range(5)]).astype(np.int64)
    hybrid = np.concatenate([source.maps[f"f{i}"][0].ravel() for i in range(5)])
    known = labels < K
    cm = np.zeros((K, K), np.int64)
    np.add.at(cm, (labels[known].astype(np.int64), ids[known]), 1)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert m["closed_set"]["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    predicted = np.where(hybrid >= np.float32(t), K, ids)[valid]
    truth = labels[valid].astype(np.int64)
    open_iou = [np.sum((truth == c) & (predicted == c)) / np.sum((truth == c) | (predicted == c)) for c in range(K)]
    assert m["open_set"]["open_miou"] == pytest.approx(np.mean(open_iou), abs=1e-12)
    flagged = hybrid >= np.float32(t)
    assert m["operating_points"]["tpr95"]["tpr"] == pytest.approx(flagged[labels == K].mean(), abs=1e-12)
    assert m["operating_points"]["tpr95"]["fpr"] == pytest.approx(flagged[known].mean(), abs=1e-12)
    # the report's material: a subsample of valid pixels per labelled frame, frames with anomalies as examples
    values, is_anomaly = result.subsample["hybrid"]
    assert values.size == is_anomaly.size == valid.sum() and is_anomaly.sum() == (labels == K).sum()
    assert [e.sample.name for e in result.examples] == ["f0", "f1", "f2", "f3", "f4"]
    # other classes than the source's: no mIoU, said so
    other = Frames()
    other.classes = ["a", "b", "c"]
    skipped = evaluate(source, other, EvalOptions(bootstrap_resamples=0), progress=False).metrics
    assert "closed_set" not in skipped and skipped["semantic_skipped"].startswith("dataset classes differ")


def test_recorded_scores_decode_as_numpy_reads_them():
    from densehybrid_ros.evaluation.recorded import decode_score, score_info
    from densehybrid_ros.perception.image_codec import ImageRejected

    scores = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    for order, big in (("<", 0), (">", 1)):
        rows = scores.astype(np.dtype(np.float32).newbyteorder(order)).view(np.uint8).reshape(3, 16)
        padded = np.hstack([rows, np.full((3, 4), 9, np.uint8)])  # one padding float per row
        msg = SimpleNamespace(encoding="32FC1", width=4, height=3, step=20, is_bigendian=big, data=padded.tobytes())
        decoded = decode_score(msg)
        assert decoded.dtype == np.float32 and decoded.dtype.isnative
        np.testing.assert_array_equal(decoded, scores)
        assert score_info(msg) == (3, 4)
    with pytest.raises(ImageRejected, match="must be 32FC1"):
        decode_score(SimpleNamespace(encoding="mono8", width=4, height=3, step=4, is_bigendian=0, data=bytes(12)))
    nan = SimpleNamespace(encoding="32FC1", width=1, height=1, step=4, is_bigendian=0,
                          data=np.array([np.nan], np.float32).tobytes())
    with pytest.raises(ImageRejected, match="non-finite"):
        score_info(nan)


def test_ground_truth_source_and_where_the_camera_mount_comes_from():
    from densehybrid_ros.evaluation.obstacle_metric import ObstacleOptions
    from densehybrid_ros.evaluation.sources import GroundTruth
    from densehybrid_ros.perception.camera import Mount

    sample = Frames()[1]
    truth = GroundTruth(CLASSES).predict(sample)
    np.testing.assert_array_equal(truth.hybrid >= 1.0, sample.ood == 1)
    np.testing.assert_array_equal(truth.open_set, np.where(sample.ood == 1, K, sample.semantic))
    np.testing.assert_array_equal(truth.class_ids, sample.semantic)

    tf = Mount(1.2, 0.05, -0.01)
    bare = EvalSample("a", sample.image)
    framed = EvalSample("b", sample.image, extras={"mount": tf, "mount_source": "tf_static"})
    assert ObstacleOptions().mount(bare) == (Mount(), "default")
    assert ObstacleOptions().mount(framed) == (tf, "tf_static")
    assert ObstacleOptions(camera_pitch=0.2).mount(framed) == (Mount(1.2, 0.2, -0.01), "tf_static+arguments")
    assert ObstacleOptions(camera_height=2.0).mount(bare) == (Mount(2.0, 0.0, 0.0), "default+arguments")
    assert ObstacleOptions(camera_height=2.0, camera_pitch=0.1, camera_roll=0.0).mount(framed) == (
        Mount(2.0, 0.1, 0.0), "arguments")
    with pytest.raises(ValueError, match="finite"):
        ObstacleOptions(camera_pitch=math.inf).validate()


def test_obstacle_metric_places_a_ground_box_where_the_pinhole_formula_does():
    """A level camera 1.5 m above flat road (f = 100 px, principal point at the centre of 128 x 64): an 8 x 8 px
    anomaly whose lowest row is 47 stands where the ray through its bottom edge (v = 47.5) meets the ground,
    z = f h / (v - cy); the box is as wide and tall as its pixels at that depth. Its centre is matched to a true box
    placed there by hand."""
    from densehybrid_ros.evaluation.obstacle_metric import ObstacleMetric, ObstacleOptions
    from densehybrid_ros.perception.camera import Mount

    f, h, cx, cy = 100.0, 1.5, 63.5, 31.5
    z = f * h / (47.5 - cy)  # 9.375 m
    size = 8 * z / f  # 0.75 m wide, and tall: (47.5 - 39.5) px
    centre = np.array([0.0, h - size / 2, z + size / 2])  # standing on the ground, as deep as wide
    ood = np.zeros((64, 128), np.uint8)
    ood[40:48, 60:68] = 1
    info = {"k": [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0], "width": 128, "height": 64}
    truth = [{"id": 3, "position": list(centre), "visible_pixels": 64}]
    sample = EvalSample("s", np.zeros((64, 128, 3), np.uint8), ood=ood,
                        extras={"camera_info": info, "anomalies": truth, "mount": Mount(h, 0.0, 0.0),
                                "mount_source": "tf"})
    prediction = Prediction(class_ids=np.zeros((64, 128), np.uint8), hybrid=ood.astype(np.float32), open_set=None)
    options = ObstacleOptions(node=(("confirm_hits", 1), ("confirm_window", 1)))
    metric = ObstacleMetric(options, CLASSES, threshold=0.5)
    metric.update(sample, prediction)
    (match,) = metric.compute()["obstacles"]["matches"]
    np.testing.assert_allclose(match["predicted_position"], centre, atol=1e-9)
    assert match["predicted_distance"] == pytest.approx(float(np.linalg.norm(centre)), abs=1e-9)
    assert match["truth_id"] == 3 and match["rel_error"] == pytest.approx(0.0, abs=1e-12)
    entry = metric.compute()["obstacles"]
    assert entry["frames"] == entry["predicted"] == entry["detected"] == 1 and entry["mount_sources"] == {"tf": 1}
    # the node's confirmation (2 of 3 frames by default): nothing published in the first frame
    default = ObstacleMetric(ObstacleOptions(), CLASSES, threshold=0.5)
    default.update(sample, prediction)
    assert default.compute()["obstacles"]["predicted"] == 0 and default.candidates == 1
    # no threshold, no CameraInfo: skipped and counted
    unthresholded = ObstacleMetric(options, CLASSES, threshold=None)
    unthresholded.update(sample, prediction)
    blind = ObstacleMetric(options, CLASSES, threshold=0.5)
    blind.update(EvalSample("s", sample.image, ood=ood, extras={"anomalies": truth}), prediction)
    assert unthresholded.compute()["obstacles"]["frames_skipped"] == {"no threshold: no anomaly mask": 1}
    assert blind.compute()["obstacles"]["frames_skipped"] == {"no camera_info": 1}
