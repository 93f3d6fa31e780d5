"""Damaged bags, damaged here by the tests, in both storage formats: cut at several points (also without metadata.yaml,
as a killed recorder leaves them), bytes flipped inside messages, and the storage's own structure broken. Every
intact frame is read equal to the rendered frame and evaluated (metrics equal to evaluate() on exactly those
frames), every intact message is replayed over real DDS, the damaged ones are counted per topic, nothing aborts.

What is intact is decided here independently of the reader: for mcap by the bytes of each message at its offset in
the file (rosbags' writer stores them uncompressed) and the chunk index rosbags reads from the intact file; for
sqlite3 by looking every row up by its id with Python's sqlite3 and comparing its bytes."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from conftest import make_sim_weights
from test_node_evalbag import FramesDataset, approx_tree, threshold_for
from test_node_support import NAMESPACE, Process, wait_until
from densehybrid_ros.datasets.base import DatasetError
from densehybrid_ros.datasets.rosbag import open_bag
from densehybrid_ros.evaluation.bag_cli import main as eval_bag_main
from densehybrid_ros.node.record import recorded_counts

W, H, N, RATE = 320, 160, 10, 5.0  # ~0.4 MB per frame: rosbags' 1 MiB mcap chunks hold ~3 frames
STORE = get_typestore(Stores.ROS2_KILTED)


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    """Small tensors: one intra-op thread is faster and far steadier on shared 2-core machines."""


@dataclasses.dataclass(frozen=True)
class Message:
    frame: int
    topic: str
    raw: bytes
    rowid: int | None  # sqlite3: the row's id


@dataclasses.dataclass(frozen=True)
class Source:
    """An intact sim bag and its messages in write order (the order of the file)."""

    path: Path
    storage: str
    data_file: Path
    messages: list[Message]

    def offsets(self) -> list[int]:
        """mcap: the file offset of every message's bytes (found in write order)."""
        payload, pos, out = self.data_file.read_bytes(), 0, []
        for m in self.messages:
            pos = payload.find(m.raw, pos)
            assert pos >= 0, m
            out.append(pos)
            pos += len(m.raw)
        return out


@pytest.fixture(scope="module")
def frames():
    from densehybrid_ros.sim.frames import driving_sequence
    from densehybrid_ros.sim.world import SimConfig, SimWorld

    with SimWorld(dataclasses.replace(SimConfig(), width=W, height=H)) as world:
        return list(driving_sequence(world, 3, "test", N, RATE, 8.0))


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def source(request, frames, tmp_path_factory) -> Source:
    from densehybrid_ros.sim.bag import START_NS, TOPICS, write_bag

    path = tmp_path_factory.mktemp("damaged") / f"sim_{request.param}"
    assert write_bag(path, frames, RATE, storage=request.param) == N
    data_file = next(f for f in path.iterdir() if f.suffix in (".mcap", ".db3"))
    order = list(TOPICS)
    with AnyReader([path], default_typestore=STORE) as reader:
        found = [((t - START_NS) // int(1e9 / RATE), conn.topic, bytes(raw)) for conn, t, raw in reader.messages()]
    found.sort(key=lambda m: (m[0], order.index(m[1])))
    rowids = [None] * len(found)
    if request.param == "sqlite3":  # row ids in insertion (= write) order
        with sqlite3.connect(data_file) as db:
            rowids = [r for (r,) in db.execute("SELECT id FROM messages ORDER BY id")]
    return Source(path, request.param, data_file, [Message(f, t, raw, r) for (f, t, raw), r in zip(found, rowids)])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_sim_weights(tmp_path_factory.mktemp("w") / "sim.safetensors")


# ------------------------------------------------------------------ damaging, and what stays intact
def damaged_copy(source: Source, out: Path, payload: bytes, metadata: bool = True) -> Path:
    """A copy of the bag directory with the storage file replaced by `payload` (and without metadata.yaml)."""
    out.mkdir()
    if metadata:
        shutil.copy(source.path / "metadata.yaml", out / "metadata.yaml")
    (out / source.data_file.name).write_bytes(payload)
    return out


def damaged_db(source: Source, bag: Path) -> sqlite3.Connection:
    """The damaged sqlite3 file, read-only; writable_schema lets SQLite open a file shorter than its header says."""
    db = sqlite3.connect(f"file:{bag / source.data_file.name}?mode=ro&immutable=1", uri=True)
    db.execute("PRAGMA writable_schema=ON")
    return db


def intact_messages(source: Source, bag: Path) -> set[int]:
    """Indices of the messages whose bytes are in the damaged file as written: mcap, at their offset; sqlite3, as the
    row's data looked up by its id."""
    if source.storage == "mcap":
        payload = (bag / source.data_file.name).read_bytes()
        return {i for i, (m, at) in enumerate(zip(source.messages, source.offsets()))
                if payload[at:at + len(m.raw)] == m.raw}
    db = damaged_db(source, bag)
    ok = set()
    for i, m in enumerate(source.messages):
        try:
            row = db.execute("SELECT data FROM messages WHERE id = ?", (m.rowid,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None and bytes(row[0]) == m.raw:
            ok.add(i)
    db.close()
    return ok


def rows_without_data(source: Source, bag: Path) -> set[int]:
    """sqlite3: indices of the messages whose row is there (id and topic readable) but whose data is not."""
    if source.storage != "sqlite3":
        return set()
    db = damaged_db(source, bag)
    out = set()
    for i, m in enumerate(source.messages):
        try:
            if db.execute("SELECT topic_id FROM messages WHERE id = ?", (m.rowid,)).fetchone() is None:
                continue
        except sqlite3.DatabaseError:
            continue
        try:
            db.execute("SELECT data FROM messages WHERE id = ?", (m.rowid,)).fetchone()
        except sqlite3.DatabaseError:
            out.add(i)
    db.close()
    return out


def intact_frames(source: Source, intact: set[int]) -> list[int]:
    """Frames all of whose messages are intact."""
    damaged = {source.messages[i].frame for i in range(len(source.messages)) if i not in intact}
    return [f for f in range(N) if f not in damaged]


def per_topic(source: Source, indices: set[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in indices:
        out[source.messages[i].topic] = out.get(source.messages[i].topic, 0) + 1
    return out


def message_index(source: Source, frame: int, topic: str) -> int:
    return next(i for i, m in enumerate(source.messages) if m.frame == frame and m.topic == topic)


def unique_at(payload: bytes, piece: bytes) -> int:
    at = payload.find(piece)
    assert at >= 0 and payload.find(piece, at + 1) < 0, "not a unique piece of the file"
    return at


def data_window(payload: bytes, raw: bytes, start: int, size: int) -> int:
    """File offset of `size` bytes of `raw` from `start` on that occur once in the file, contiguously (for sqlite3:
    within one page)."""
    for off in range(start, len(raw) - size, 61):
        at = payload.find(raw[off:off + size])
        if at >= 0 and payload.find(raw[off:off + size], at + 1) < 0:
            return at
    raise AssertionError("no unique window")


def assert_frames_read_as_rendered(bag: Path, frames, expected: list[int]) -> dict:
    """The dataset's frames are exactly `expected`, each equal to the rendered frame; returns its reading()."""
    from densehybrid_ros.sim.bag import START_NS

    with open_bag(bag) as dataset:
        stamps = [START_NS + f * int(1e9 / RATE) for f in expected]
        assert dataset.stamps == stamps, (dataset.reading_lines(), expected)
        for i, f in enumerate(expected):
            sample = dataset[i]
            assert sample.image.tobytes() == frames[f].rgb.tobytes()
            np.testing.assert_array_equal(sample.semantic, frames[f].labels)
            finite = np.isfinite(frames[f].depth)
            np.testing.assert_array_equal(sample.depth[finite], frames[f].depth[finite])
            assert sample.extras["mount_source"] == "tf" and sample.extras["camera_info"] is not None
            assert {a["id"] for a in sample.extras["anomalies"]} == {a.instance_id for a in frames[f].anomalies}
        return dataset.reading()


def assert_evaluated_like_evaluate(bag: Path, frames, expected: list[int], weights: Path, out: Path, capsys) -> dict:
    """densehybrid-eval-bag on the damaged bag: exit 0, the metrics of evaluate() on exactly the `expected` frames,
    the reading printed. Returns metrics.json."""
    from densehybrid_ros.evaluation.evaluate import EvalOptions, evaluate
    from densehybrid_ros.predictor import Predictor

    threshold = threshold_for(weights, frames)
    rc = eval_bag_main(["--bag", str(bag), "--weights", str(weights), "--out", str(out), "--quiet",
                        "--threshold", repr(threshold)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["images"] == len(expected)
    reference = evaluate(Predictor.from_weights(weights), FramesDataset([frames[f] for f in expected]),
                         EvalOptions(threshold=threshold), progress=False).metrics
    assert metrics["scores"]["hybrid"]["anomaly"] == approx_tree(reference["scores"]["hybrid"]["anomaly"])
    assert metrics["closed_set"] == reference["closed_set"] and metrics["open_set"] == reference["open_set"]
    reading = metrics["bag_reading"]["ground_truth"]
    assert reading["damaged"] and reading["frames"]["used"] == len(expected)
    assert f"bag {bag} ({reading['storage']}): damaged" in printed.out
    for topic in reading["topics"]:
        assert f"  {topic}: {reading['topics'][topic]['read']} read" in printed.out
    return metrics


# ------------------------------------------------------------------ cut short
@pytest.mark.parametrize("fraction,metadata", [(0.35, True), (0.6, True), (0.85, True), (0.6, False)],
                         ids=["cut35", "cut60", "cut85", "killed60"])
def test_cut_bags_keep_every_frame_before_the_cut(source, frames, tmp_path, fraction, metadata):
    payload = source.data_file.read_bytes()
    bag = damaged_copy(source, tmp_path / "cut", payload[:int(len(payload) * fraction)], metadata)
    intact = intact_messages(source, bag)
    expected = intact_frames(source, intact)
    assert 0 < len(expected) < N - 1  # the cut takes frames, not all of them
    reading = assert_frames_read_as_rendered(bag, frames, expected)
    assert reading["reader"].startswith("the salvage reader") and reading["stopped_early"]
    assert reading["metadata"] == ("ok" if metadata else "missing")
    counts = per_topic(source, intact)
    for topic, entry in reading["topics"].items():
        assert entry["read"] == counts[topic], (topic, entry)  # every intact message, and only those
        assert entry["decode_errors"] == entry["rejected"] == 0
        assert entry["expected"] == (N if metadata else None)
        if metadata:
            assert entry["missing"] == N - entry["read"] - entry["unreadable"]
    # the frame the cut runs through is left out and counted (its image and labels may have survived)
    assert sum(reading["frames"]["dropped"].values()) + reading["frames"]["unlabelled"] + len(expected) == \
        reading["frames"]["images"]


def test_cut_compressed_mcap_keeps_its_complete_chunks(frames, tmp_path):
    """zstd-compressed chunks (rosbags' storage compression): those wholly before the cut are read, by the chunk
    index rosbags reads from the intact file; the cut one cannot be decompressed and is lost."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    from rosbags.rosbag2.storage_mcap import McapReader

    from densehybrid_ros.sim.bag import START_NS, TOPICS, SimBagMessages

    msgs, period = SimBagMessages(), int(1e9 / RATE)
    writer = Writer(tmp_path / "zstd", version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=msgs.store)
                 for topic, msgtype in TOPICS.items()}
        for i, frame in enumerate(frames):
            for topic, msg in msgs.frame_messages(START_NS + i * period, frame, period).items():
                writer.write(conns[topic], START_NS + i * period, msgs.store.serialize_cdr(msg, TOPICS[topic]))
    data_file = tmp_path / "zstd" / "zstd.mcap"
    index = McapReader(data_file)
    index.open()
    chunks = list(index.chunks)
    index.close()
    assert len(chunks) >= 3 and all(c.compression == "zstd" for c in chunks)
    payload = data_file.read_bytes()
    cut = int(len(payload) * 0.6)
    complete = {c.chunk_start_offset for c in chunks if c.chunk_start_offset + c.chunk_length <= cut}
    expected = [f for f in range(N) if all(c.chunk_start_offset in complete for c in chunks
                                           if c.message_start_time <= START_NS + f * period <= c.message_end_time)]
    assert 0 < len(expected) < N
    bag = tmp_path / "cut"
    bag.mkdir()
    (bag / data_file.name).write_bytes(payload[:cut])
    reading = assert_frames_read_as_rendered(bag, frames, expected)
    assert reading["metadata"] == "missing" and reading["stopped_early"]


def test_killed_recording_is_evaluated_up_to_the_cut(source, frames, weights, tmp_path, capsys):
    """The issue's case: a recording cut at 60% without metadata.yaml, through densehybrid-eval-bag."""
    payload = source.data_file.read_bytes()
    bag = damaged_copy(source, tmp_path / "killed", payload[:int(len(payload) * 0.6)], metadata=False)
    expected = intact_frames(source, intact_messages(source, bag))
    metrics = assert_evaluated_like_evaluate(bag, frames, expected, weights, tmp_path / "out", capsys)
    reading = metrics["bag_reading"]["ground_truth"]
    assert reading["metadata"] == "missing" and reading["damage"][0].startswith("rosbags refused the bag")
    # the oracle mode reads it the same way
    assert eval_bag_main(["--bag", str(bag), "--oracle", "--out", str(tmp_path / "oracle")]) == 0
    oracle = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    assert oracle["obstacles"]["frames"] == len(expected) and oracle["bag_reading"] == metrics["bag_reading"]
    capsys.readouterr()


# ------------------------------------------------------------------ bytes flipped inside messages
def flip_messages(source: Source) -> tuple[bytes, dict[str, int]]:
    """The storage file with four frames' messages damaged; frame -> what:
    2: 200 label bytes XOR 0x80 (values outside the classes), 4: the image encoding "rgb8" -> "rgX8",
    6: the depth image's encoding length (CDR no longer deserializes), 8: the CameraInfo's fx -> NaN."""
    payload = bytearray(source.data_file.read_bytes())
    labels = source.messages[message_index(source, 2, "/camera/labels")].raw
    at = data_window(bytes(payload), labels, len(labels) - W * H, 200)
    payload[at:at + 200] = bytes(b ^ 0x80 for b in payload[at:at + 200])
    image = source.messages[message_index(source, 4, "/camera/image_raw")].raw
    at = unique_at(bytes(payload), image[:80]) + image.index(b"rgb8")
    payload[at:at + 4] = b"rgX8"
    depth = source.messages[message_index(source, 6, "/camera/depth")].raw
    at = unique_at(bytes(payload), depth[:80]) + depth.index(b"32FC1") - 4
    payload[at:at + 4] = struct.pack("<I", 0x7FFFFFF0)
    info = source.messages[message_index(source, 8, "/camera/camera_info")].raw
    fx = struct.pack("<d", frames_fx(info))
    at = unique_at(bytes(payload), info[:80]) + info.index(fx)
    payload[at:at + 8] = struct.pack("<d", float("nan"))
    return bytes(payload), {"/camera/labels": 2, "/camera/image_raw": 4, "/camera/depth": 6, "/camera/camera_info": 8}


def frames_fx(raw: bytes) -> float:
    return float(STORE.deserialize_cdr(raw, "sensor_msgs/msg/CameraInfo").k[0])


def test_flipped_bytes_skip_and_count_only_the_damaged_frames(source, frames, weights, tmp_path, capsys):
    payload, damaged = flip_messages(source)
    bag = damaged_copy(source, tmp_path / "flipped", payload)
    intact = intact_messages(source, bag)
    assert len(intact) == len(source.messages) - 4  # exactly the four messages were hit
    expected = intact_frames(source, intact)
    assert expected == [f for f in range(N) if f not in damaged.values()]
    metrics = assert_evaluated_like_evaluate(bag, frames, expected, weights, tmp_path / "out", capsys)
    reading = metrics["bag_reading"]["ground_truth"]
    topics = reading["topics"]
    assert all(t["read"] == N and t["unreadable"] == 0 for t in topics.values())  # storage intact: all read
    assert (topics["/camera/labels"]["rejected"], topics["/camera/image_raw"]["rejected"],
            topics["/camera/depth"]["decode_errors"], topics["/camera/camera_info"]["rejected"]) == (1, 1, 1, 1)
    assert sum(t["skipped"] for t in topics.values()) == 4
    assert topics["/camera/labels"]["reasons"] == {
        "label values other than 0..14 (classes), 15 (anomaly), 255 (void)": 1}
    assert any("rgX8" in r for r in topics["/camera/image_raw"]["reasons"])
    assert any("Invalid string length" in r for r in topics["/camera/depth"]["reasons"])
    assert any("finite" in r for r in topics["/camera/camera_info"]["reasons"])
    assert reading["frames"]["dropped"] == {"label values out of range (/camera/labels)": 1,
                                            "image rejected (/camera/image_raw)": 1,
                                            "no depth message (/camera/depth damaged)": 1,
                                            "camera_info rejected (/camera/camera_info)": 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_burst_of_200_bad_bytes_never_aborts(source, frames, tmp_path, seed):
    """200 consecutive bytes inverted at a random place past the first 64 KiB (a bad sector; the topics and channels
    are before it): the evaluation and the replay end normally, and every intact frame (for mcap, whose record
    framing cannot resynchronise: every one wholly before the damage) is evaluated as rendered."""
    from densehybrid_ros.sim.bag import START_NS

    payload = bytearray(source.data_file.read_bytes())
    start = int(np.random.default_rng(seed).integers(65536, len(payload) - 200))
    payload[start:start + 200] = bytes(b ^ 0xFF for b in payload[start:start + 200])
    bag = damaged_copy(source, tmp_path / "burst", bytes(payload))
    intact = intact_messages(source, bag)
    if source.storage == "mcap":
        offsets = source.offsets()
        intact = {i for i in intact if offsets[i] + len(source.messages[i].raw) <= start}
    expected = intact_frames(source, intact)
    assert expected  # (these seeds leave intact frames to check)
    assert eval_bag_main(["--bag", str(bag), "--oracle", "--out", str(tmp_path / "oracle")]) == 0
    with open_bag(bag) as dataset:
        used = {(s - START_NS) // int(1e9 / RATE): i for i, s in enumerate(dataset.stamps)}
        assert set(expected) <= set(used), (expected, sorted(used), dataset.reading_lines())
        for f in expected:
            assert dataset[used[f]].image.tobytes() == frames[f].rgb.tobytes()
    replay = Process(["-m", "densehybrid_ros.node.replay", str(bag), "--rate", "100"], tmp_path / "replay.log")
    wait_until(lambda: not replay.alive(), 120, message="replay to finish")
    assert replay.proc.returncode == 0 and "published" in replay.text(), replay.text()


# ------------------------------------------------------------------ the storage's structure broken
def test_broken_storage_structure_loses_only_what_it_holds(source, frames, tmp_path):
    """mcap: the length of a message record inside a chunk (the file keeps its index, so rosbags opens it and fails
    part-way): the rest of that chunk is lost, later chunks are read. sqlite3: the page type of the b-tree page that
    holds a row of frame 5 (SQLite: malformed): the rows of that page are lost, later rows are read."""
    payload = bytearray(source.data_file.read_bytes())
    depth = message_index(source, 5, "/camera/depth")
    if source.storage == "mcap":
        from rosbags.rosbag2.storage_mcap import McapReader

        offsets = source.offsets()
        record = offsets[depth] - 31  # opcode, length, channel, sequence, log time, publish time, then the data
        assert payload[record] == 0x05
        payload[record + 1:record + 9] = struct.pack("<Q", 2 ** 40)
        reader = McapReader(source.data_file)
        reader.open()
        chunk_end = next(c.chunk_start_offset + c.chunk_length for c in reader.chunks
                         if c.chunk_start_offset < record < c.chunk_start_offset + c.chunk_length)
        reader.close()
        bag = damaged_copy(source, tmp_path / "broken", bytes(payload))
        lost = {i for i, at in enumerate(offsets) if record <= at < chunk_end}
        intact = set(range(len(source.messages))) - lost
    else:
        page = 4096
        at = unique_at(bytes(payload), source.messages[depth].raw[:80])
        leaf = at // page * page
        assert payload[leaf] == 0x0D  # a table b-tree leaf page
        payload[leaf] = 0x00
        bag = damaged_copy(source, tmp_path / "broken", bytes(payload))
        intact = intact_messages(source, bag)
    expected = intact_frames(source, intact)
    assert 5 not in expected and expected[-1] == N - 1  # frames after the damage are read again
    reading = assert_frames_read_as_rendered(bag, frames, expected)
    assert sum(t["read"] for t in reading["topics"].values()) == len(intact)
    if source.storage == "mcap":
        assert reading["reader"].startswith("rosbags, then the salvage reader")
    assert reading["damaged"] and reading["damage"]


def test_unusable_bags_are_named_errors(source, tmp_path):
    """Damage that leaves nothing: the error names the bag and what was wrong, nothing else escapes."""
    payload = source.data_file.read_bytes()
    for name, cut in (("header_only", 64), ("empty", 0)):
        bag = damaged_copy(source, tmp_path / name, payload[:cut], metadata=False)
        with pytest.raises(DatasetError, match=f"cannot read .*{name}"):
            open_bag(bag)


# ------------------------------------------------------------------ replay
def test_damaged_bag_replays_every_intact_message(source, tmp_path):
    """densehybrid-replay -> DDS -> densehybrid-record on a recording cut at 70% without metadata.yaml whose frame 1
    depth image no longer deserializes: every intact message arrives with its bytes, the damaged one is skipped and
    counted in the replay's summary, the replay exits 0."""
    payload = bytearray(source.data_file.read_bytes())
    depth = source.messages[message_index(source, 1, "/camera/depth")].raw
    at = unique_at(bytes(payload), depth[:80]) + depth.index(b"32FC1") - 4
    payload[at:at + 4] = struct.pack("<I", 0x7FFFFFF0)
    bag = damaged_copy(source, tmp_path / "bag", bytes(payload[:int(len(payload) * 0.7)]), metadata=False)
    undecodable = message_index(source, 1, "/camera/depth")
    played = {i for i, m in enumerate(source.messages) if m.topic != "/tf"}  # no tf2_msgs for rclpy here
    intact = intact_messages(source, bag) & played
    assert undecodable not in intact
    expected = per_topic(source, intact)
    remaps = {topic: f"{NAMESPACE}{topic}" for topic in expected}
    recorder = Process(["-m", "densehybrid_ros.node.record", "--out", str(tmp_path / "recorded"), "--status-period",
                        "0.2", "--topics", *remaps.values()], tmp_path / "record.log")
    replay = None
    try:
        replay = Process(["-m", "densehybrid_ros.node.replay", str(bag), "--rate", "2", "--depth", "100",
                          "--wait-for-subscribers", "30", "--topics", *remaps,
                          *[arg for old, new in remaps.items() for arg in ("--remap", f"{old}:={new}")]],
                         tmp_path / "replay.log")
        wait_until(lambda: not replay.alive(), 90, message="replay to finish")
        assert replay.proc.returncode == 0, replay.text()
        wait_until(lambda: all(recorded_counts(recorder.text()).get(remaps[t], 0) >= n for t, n in expected.items()),
                   30, message="the recorder's writes")
    finally:
        if replay is not None:
            replay.stop()
        assert recorder.stop() == 0, recorder.text()
    log = replay.text()
    assert f"published {len(intact)} message(s) in 1 pass(es)" in log, log
    assert "damaged" in log and "/camera/depth: " in log and "1 undecodable" in log, log
    unreadable = rows_without_data(source, bag) & played  # sqlite3: rows the cut runs through
    assert f"skipped {1 + len(unreadable)} damaged message(s)" in log, log
    with AnyReader([tmp_path / "recorded"], default_typestore=STORE) as reader:
        got: dict[str, list[bytes]] = {}
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            got.setdefault(conn.topic, []).append(bytes(STORE.serialize_cdr(msg, conn.msgtype)))
    for topic, out in remaps.items():
        want = [source.messages[i].raw for i in sorted(intact) if source.messages[i].topic == topic]
        assert got.get(out, []) == want, topic
