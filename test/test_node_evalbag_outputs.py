"""densehybrid-eval-bag --outputs: the node's recorded outputs scored against the ground-truth bag by stamp, without
running a model. Once on a bag of the Predictor's own maps (exact equality with evaluate()), once end to end: sim bag
-> densehybrid-replay (closed loop) -> the perception node (real DDS) -> densehybrid-record -> eval-bag --outputs."""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from test_node_evalbag import RATE, FramesDataset, frame_name, mount_of, threshold_for
from test_node_evalbag import _single_thread, frames, sim_bag, sim_weights  # noqa: F401  (module fixtures)
from test_node_support import (NAMESPACE, NODE, PER_FRAME_OBSTACLES, Harness, Process, eval_bag_options, node_process,
                               wait_until)
from densehybrid_ros.evaluation.bag_cli import main as eval_bag_main
from densehybrid_ros.node.record import recorded_counts
from densehybrid_ros.predictor import Predictor

def write_outputs_bag(path, frames, predictor, skip: int):
    """What densehybrid-record would hold: ~/anomaly_score 32FC1 and ~/semantic mono8 with the input stamps, received
    later than stamped; frame `skip` was never answered."""
    from densehybrid_ros.sim.bag import START_NS, SimBagMessages

    msgs = SimBagMessages()
    store = msgs.store
    period = int(round(1e9 / RATE))
    topics = {"score": "/densehybrid_perception/anomaly_score", "semantic": "/densehybrid_perception/semantic"}
    with Writer(path, version=9) as writer:
        conns = {k: writer.add_connection(t, "sensor_msgs/msg/Image", typestore=store) for k, t in topics.items()}
        for i, frame in enumerate(frames):
            if i == skip:
                continue
            stamp = START_NS + i * period
            pred = predictor.predict(frame.rgb)
            received = 2_000_000_000_000_000_000 + i * 77_000_000
            writer.write(conns["score"], received, store.serialize_cdr(msgs.image(stamp, pred.hybrid, "32FC1"),
                                                                       "sensor_msgs/msg/Image"))
            writer.write(conns["semantic"], received + 1, store.serialize_cdr(msgs.image(stamp, pred.class_ids, "mono8"),
                                                                              "sensor_msgs/msg/Image"))
    return path


def test_recorded_maps_score_like_evaluate_on_the_answered_frames(sim_bag, sim_weights, frames, tmp_path, capsys):
    from densehybrid_ros.evaluation.evaluate import EvalOptions, evaluate

    threshold = threshold_for(sim_weights, frames)
    predictor = Predictor.from_weights(sim_weights)
    outputs = write_outputs_bag(tmp_path / "recorded", frames, predictor, skip=2)
    camera = mount_of(frames[0])
    # obstacles frame by frame (confirmation over 1 of 1 frames, no miss budget): the recorded sequence lacks frame 2,
    # so obstacles confirmed across frames would legitimately differ from the full sequence's around it
    mount = ["--camera-height", repr(camera.height), "--camera-pitch", repr(camera.pitch),
             "--camera-roll", repr(camera.roll),
             "--min-area", "3", "--min-visible", "3", "--threshold", repr(threshold),
             *eval_bag_options(*PER_FRAME_OBSTACLES)]
    assert eval_bag_main(["--bag", str(sim_bag), "--outputs", str(outputs), "--weights", str(sim_weights), "--quiet",
                          "--out", str(tmp_path / "rec"), *mount]) == 0
    recorded = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert recorded["mode"] == "outputs"
    assert recorded["outputs"]["scored_frames"] == len(frames) - 1 and recorded["outputs"]["missing_outputs"] == 1
    assert recorded["outputs"]["obstacles_from"] == "recorded anomaly score"
    answered = [f for i, f in enumerate(frames) if i != 2]
    reference = evaluate(predictor, FramesDataset(answered), EvalOptions(threshold=threshold), progress=False).metrics
    assert recorded["scores"]["hybrid"]["anomaly"] == reference["scores"]["hybrid"]["anomaly"]  # the same float32 maps
    assert recorded["closed_set"] == reference["closed_set"] and recorded["open_set"] == reference["open_set"]
    # the obstacles placed from the recorded score are those of the model run on the same frames
    assert eval_bag_main(["--bag", str(sim_bag), "--weights", str(sim_weights), "--quiet", "--out", str(tmp_path / "live"),
                          *mount]) == 0
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())["obstacles"]["matches"]
    skipped = frame_name(2, RATE)
    assert recorded["obstacles"]["matches"] == [m for m in live if m["frame"] != skipped]
    capsys.readouterr()


def test_replayed_through_the_node_and_recorded(sim_bag, sim_weights, frames, tmp_path):
    """The whole live path: stamps survive the node, and the recorded scores and markers score as the model does.

    Every frame must be answered, so the replay runs closed loop (--answer-topic): the node keeps only the newest
    frame (a frame replaced before its worker took it is dropped), and an open-loop replay hands it several frames
    at once whenever a process stalls on a loaded machine or a reliable sample waits for its repair; the node is
    stalled once on purpose below."""
    from sensor_msgs.msg import Image

    threshold = threshold_for(sim_weights, frames)
    mount = mount_of(frames[0])
    # obstacles frame by frame in the node and in eval-bag below: the node gets the first CameraInfo after the first
    # image, so its tracks would start a frame later than eval-bag's and confirmation across frames would differ; and
    # no drivable-surface check: the classes of these random weights mean nothing (the rules are compared between
    # eval-bag and the node's code in test_node_evalbag.py)
    rules = (*PER_FRAME_OBSTACLES, "ground_band:=1.0")
    node = node_process(tmp_path, f"weights:={sim_weights}", f"threshold:={threshold!r}", "min_obstacle_area:=3",
                        f"camera_height:={mount.height!r}", f"camera_pitch:={mount.pitch!r}",
                        f"camera_roll:={mount.roll!r}",
                        "qos_reliability:=reliable", "qos_depth:=10", "marker_lifetime:=0.0", *rules)
    outputs = {name: f"{NODE}/{name}" for name in ("anomaly_score", "semantic", "obstacles")}
    recorder = Process(["-m", "densehybrid_ros.node.record", "--out", str(tmp_path / "recorded"), "--status-period",
                        "0.2", "--topics", *outputs.values()], tmp_path / "record.log")
    harness = Harness("evalbag")
    replay = None
    try:
        scores = harness.collector(Image, outputs["anomaly_score"])
        # the recorder subscribes to the node's outputs once they appear; then the node runs frames
        wanted = {outputs["anomaly_score"]: 2, outputs["semantic"]: 1, outputs["obstacles"]: 1}  # + our collector
        # count_subscribers counts our own collector at once; its match with the node's publisher is seen here
        wait_until(lambda: (all(harness.node.count_subscribers(t) >= n for t, n in wanted.items())
                            and scores.subscription.get_publisher_count() >= 1) or not node.alive(),
                   60, message="recorder and collector matched with the node's outputs")
        assert node.alive(), node.text()
        replay = Process(["-m", "densehybrid_ros.node.replay", str(sim_bag), "--rate", "0.5",
                          "--topics", "/camera/image_raw", "/camera/camera_info", "--wait-for-subscribers", "30",
                          "--remap", f"/camera/image_raw:={NAMESPACE}/image",
                          "--remap", f"/camera/camera_info:={NAMESPACE}/camera_info",
                          "--answer-topic", outputs["semantic"], "--answer-for", "/camera/image_raw"],
                         tmp_path / "replay.log")
        # the node stalls mid-stream (as a descheduled process does): the frames sent meanwhile would reach it at
        # once on resuming, and all but the newest be dropped, were the replay open loop (seen as a rare timeout here)
        wait_until(lambda: len(scores.messages) >= 2 or not node.alive(), 60, message="the node's first answers")
        node.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(1.5)  # > 3 frame periods at rate 0.5
        finally:
            node.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: len(scores.messages) >= len(frames), 60, message="the node's answers")
        wait_until(lambda: not replay.alive(), 30, message="replay to end")
        assert f"closed loop on {outputs['semantic']}" in replay.text(), replay.text()
        # the recorder has written every answer (one message per frame and output) before it is stopped
        wait_until(lambda: all(recorded_counts(recorder.text()).get(t, 0) >= len(frames) for t in outputs.values()),
                   30, message="the recorder's writes")
    finally:
        if replay is not None:
            replay.stop()
        assert recorder.stop() == 0, recorder.text()
        node.stop()
        harness.close()
    out = tmp_path / "scored"
    assert eval_bag_main(["--bag", str(sim_bag), "--outputs", str(tmp_path / "recorded"), "--weights", str(sim_weights),
                          "--quiet", "--out", str(out), "--score-topic", outputs["anomaly_score"],
                          "--semantic-topic", outputs["semantic"], "--obstacles-topic", outputs["obstacles"],
                          "--threshold", repr(threshold), "--min-visible", "3", "--camera-height", repr(mount.height),
                          "--camera-pitch", repr(mount.pitch), "--camera-roll", repr(mount.roll)]) == 0, node.text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["outputs"]["scored_frames"] == len(frames), (metrics["outputs"], node.text())
    assert metrics["outputs"]["obstacles_from"] == "recorded markers"
    # the same as the model run here (another process, same Predictor): equal up to float noise across processes
    direct = tmp_path / "direct"
    assert eval_bag_main(["--bag", str(sim_bag), "--weights", str(sim_weights), "--quiet", "--out", str(direct),
                          "--threshold", repr(threshold), "--min-area", "3", "--min-visible", "3",
                          "--camera-height", repr(mount.height), "--camera-pitch", repr(mount.pitch),
                          "--camera-roll", repr(mount.roll), *eval_bag_options(*rules)]) == 0
    reference = json.loads((direct / "metrics.json").read_text())
    assert metrics["scores"]["hybrid"]["anomaly"]["ap"] == pytest.approx(reference["scores"]["hybrid"]["anomaly"]["ap"], abs=1e-3)
    # the first image reaches the node before the first CameraInfo (bag order): no 3-D markers for that frame
    first = frame_name(0, RATE)
    ours = [m for m in metrics["obstacles"]["matches"] if m["frame"] != first]
    theirs = [m for m in reference["obstacles"]["matches"] if m["frame"] != first]
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert a["truth_id"] == b["truth_id"] and a["frame"] == b["frame"]
        np.testing.assert_allclose(a["predicted_position"], b["predicted_position"], atol=1e-3)
