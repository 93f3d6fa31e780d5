"""Kind `bag`: camera images and ground-truth label images from a ROS 2 (or ROS 1) bag, read with rosbags (or
salvaged from a damaged one).

Spec ``bag:PATH``. PATH is either

- a bag: a rosbag2 directory (sqlite3 or mcap; its .db3/.mcap file names the directory too) or a ROS 1 .bag
  file, read with the default topics below; or
- a YAML file (``*.yaml`` / ``*.yml``) naming the bag and overriding any default::

      bag: run_07            # relative to the YAML file
      image: /front/image_raw
      labels: /front/labels
      depth: null            # no depth
      anomaly_id: 15
      classes: sim           # sim | none | auto | [road, sidewalk, ...]

=============  ======================  ===========================================================================
key            default                 meaning
=============  ======================  ===========================================================================
image          /camera/image_raw       sensor_msgs/Image (any encoding the node decodes) or CompressedImage
labels         /camera/labels          sensor_msgs/Image mono8 (or 8UC1): class ids, ``anomaly_id`` = anomaly,
                                       255 = void (the sim bag's convention)
depth          /camera/depth           32FC1 metres / 16UC1 mm; optional: used when the topic is in the bag
                                       (naming a topic in a YAML spec makes it required)
camera_info    /camera/camera_info     sensor_msgs/CameraInfo (for obstacle localisation); optional
anomalies      /sim/anomalies          visualization_msgs/MarkerArray of true anomaly boxes; optional
anomaly_ns     anomaly                 marker namespace of the true boxes
anomaly_id     15                      label value of anomaly pixels (the sim's K)
ground_frame   base_footprint          /tf or /tf_static parent frame (z up, on the ground) of the camera frame
classes        auto                    names of the K known classes; ``auto`` = the sim's classes
                                       (densehybrid_ros.sim.taxonomy) when the bag has the anomalies topic and
                                       anomaly_id is the sim's, else none (no mIoU)
=============  ======================  ===========================================================================

Frames: the messages on the image topic, ordered by header stamp. Each needs a label image with exactly the same
header stamp; images without one are skipped and counted (`unlabelled`), a repeated image stamp keeps the first
message (`duplicates`). Depth, markers and /tf are matched by exact stamp as well; CameraInfo by exact stamp,
else the latest one before the image (drivers publish it with the image's stamp; some only at startup).

Sample: ``image`` RGB uint8 (decoded by the node's codec, densehybrid_ros.perception.image_codec), ``semantic`` the
label image as stored, ``ood`` anomaly -> 1, 255 -> 255, everything else 0, ``depth`` float32 metres with NaN
where invalid (the sim's +inf sky included: NaN = unknown is the EvalSample convention). ``extras``: ``stamp_ns``,
``frame_id``, ``camera_info`` (k, width, height) or None, ``anomalies`` (list of dicts: id, position, size in the
image frame, text, visible_pixels parsed from the sim's ``visible_px=N`` text) or None when the bag has no
markers for the frame, ``mount`` (a `densehybrid_ros.perception.camera.Mount`: height, pitch, roll in the node's
convention, from the ground frame to the camera frame on /tf at the image stamp, else /tf_static) or None, and
``mount_source`` ("tf" | "tf_static", None without a mount).

Damaged bags (a recording cut short, flipped bytes; see densehybrid_ros.bagio): the bag is read by bagio.BagReader,
which salvages what a damaged file holds. While indexing, every message is decoded and checked (images and depth
images decodable, label images mono8 with values 0..K-1, anomaly_id or 255 when the classes are known, CameraInfo K
usable, markers and transforms finite). A message that fails is skipped and counted under its topic, and its frame
is left out (`dropped`: reason -> frames): also a frame whose label image, depth image or markers are missing while
that topic lost messages to damage, whose images disagree in size, or whose transform gives no valid camera mount
(e.g. the camera below the ground). `reading()` / `reading_lines()` give the per-topic counts and the frames for
metrics.json and consoles; nothing damaged ends an evaluation.

Memory: opening the dataset makes one pass over the bag and keeps only an index per topic (header stamp ->
where the message is and what its check returned: a few numbers per message; /tf transforms between the two
frames as 7 numbers). ``dataset[i]`` reads the few messages of one frame again (rosbags' time-range query: an
indexed query in sqlite3, the chunk index in mcap; a salvaged bag: the row or the file offset), so memory is one
frame whatever the bag's length, and frames can be read in any order. The reader stays open until ``close()``
(or garbage collection).
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from densehybrid_ros.bagio import BagError, BagReader, DecodeError, RawMessage
from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, VOID, DatasetError, EvalSample, register
from densehybrid_ros.perception import image_codec
from densehybrid_ros.perception.image_codec import ImageRejected, stamp_ns
from densehybrid_ros.perception.camera import CameraModel, Mount, quaternion_to_rotation

SIM_ANOMALY_ID = 15  # densehybrid_ros.sim.taxonomy.ANOMALY_ID (checked by a test; not imported: no pybullet needed)
LABEL_ENCODINGS = ("mono8", "8UC1")
TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"
UNLABELLED = "unlabelled"  # _drop_reason: an image without a label image (not damage)
VISIBLE_RE = re.compile(r"visible_px=(\d+)")


@dataclass(frozen=True)
class BagTopics:
    image: str = "/camera/image_raw"
    labels: str = "/camera/labels"
    depth: str | None = "/camera/depth"
    camera_info: str | None = "/camera/camera_info"
    anomalies: str | None = "/sim/anomalies"
    anomaly_ns: str = "anomaly"
    anomaly_id: int = SIM_ANOMALY_ID
    ground_frame: str = "base_footprint"
    classes: Any = "auto"  # "auto" | "sim" | "none" | None | list of names
    required: tuple[str, ...] = ("image", "labels")  # topic keys whose absence is an error

    @classmethod
    def from_yaml(cls, path: Path) -> tuple[Path, "BagTopics"]:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DatasetError(f"bag: cannot read spec {path}: {exc}") from None
        if not isinstance(data, dict) or "bag" not in data:
            raise DatasetError(f"bag: spec {path} must be a mapping with at least the key 'bag' (the bag's path)")
        known = {f for f in cls.__dataclass_fields__ if f != "required"} | {"bag"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"bag: spec {path}: unknown key(s) {unknown}; known: {sorted(known)}")
        bag = Path(str(data.pop("bag"))).expanduser()
        if not bag.is_absolute():
            bag = path.parent / bag
        if "anomaly_id" in data and (isinstance(data["anomaly_id"], bool) or not isinstance(data["anomaly_id"], int)
                                     or not 0 <= data["anomaly_id"] <= 254):
            raise DatasetError(f"bag: spec {path}: anomaly_id must be an integer in [0, 254], got {data['anomaly_id']!r}")
        required = ("image", "labels") + tuple(k for k in ("depth", "camera_info", "anomalies") if data.get(k))
        return bag, cls(**data, required=required)


def message_stamp(msg: Any) -> int | None:
    """Header stamp of a message; for a MarkerArray the newest stamp of its markers (None when it has none)."""
    header = getattr(msg, "header", None)
    if header is not None:
        return stamp_ns(header.stamp)
    markers = getattr(msg, "markers", None)
    if markers is not None:
        stamps = [stamp_ns(m.header.stamp) for m in markers]
        stamps = [s for s in stamps if s > 0]  # DELETE markers usually carry no stamp
        return max(stamps) if stamps else None
    return None


@dataclass(frozen=True)
class IndexEntry:
    """Where a message is (for BagReader.fetch) and what its topic's check returned (e.g. an image's size)."""

    receive_ns: int
    locator: tuple
    info: Any = None


@dataclass
class _Topic:
    msgtype: str
    index: dict[int, IndexEntry] = field(default_factory=dict)  # header stamp -> entry
    unstamped: dict[int, tuple] = field(default_factory=dict)  # receive time -> locator (stampless MarkerArrays)
    rejected: set[int] = field(default_factory=set)  # header stamps of messages that failed the topic's check
    duplicates: int = 0


Check = Callable[[Any, str], Any]  # (message, msgtype) -> info to keep; raises (ValueError, ...) to reject


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


class StampIndexedBag:
    """A bag read with densehybrid_ros.bagio.BagReader (rosbags, or salvaged when damaged), with per-topic
    header-stamp indexes and lazy reads of single messages.

    `topics`: the topics to index; absent ones are simply not in `self.topics` (the caller decides whether that
    is an error). `checks`: per topic, a function of (message, msgtype) run on every message during indexing; what
    it returns is kept in the index entry, and a message it raises for is left out, counted under its topic and its
    stamp remembered (`_Topic.rejected`). Messages that do not deserialize are counted and left out too. /tf and
    /tf_static are parsed during the indexing pass (transforms `parent` -> any child; non-finite ones rejected).
    `self.report` says what was read and lost (bagio.ReadReport)."""

    def __init__(self, path: Path, topics: list[str], tf_parent: str | None = None,
                 checks: dict[str, Check] | None = None) -> None:
        try:
            self.reader = BagReader(Path(path))
        except BagError as exc:
            raise DatasetError(f"bag: {exc}") from None
        self.path = self.reader.path
        self.report = self.reader.report
        self.available = sorted(self.reader.topics)
        self.topics: dict[str, _Topic] = {}
        for topic, msgtype in self.reader.connections:
            if topic not in topics:
                continue
            entry = self.topics.setdefault(topic, _Topic(msgtype))
            if msgtype != entry.msgtype:
                self.close()
                raise DatasetError(f"bag: {self.path}: topic {topic} has two types ({entry.msgtype}, {msgtype})")
        self.checks = dict(checks or {})
        self.tf_parent = tf_parent
        self.tf: dict[tuple[str, int], tuple[float, ...]] = {}  # (child, stamp) -> translation + quaternion
        self.tf_static: dict[str, tuple[float, ...]] = {}
        tf_topics = [t for t in (TF_TOPIC, TF_STATIC_TOPIC)
                     if tf_parent and self.reader.topics.get(t) == "tf2_msgs/msg/TFMessage"]
        self._index(tf_topics)

    def _index(self, tf_topics: list[str]) -> None:
        wanted = [*self.topics, *tf_topics]
        if not wanted:
            return
        for raw in self.reader.messages(wanted):
            msg = self.reader.decode(raw)
            if msg is None:
                continue
            if raw.topic in tf_topics:
                self._add_transforms(msg, raw.topic)
            else:
                self._add(raw, msg)

    def _add(self, raw: RawMessage, msg: Any) -> None:
        entry = self.topics[raw.topic]
        stamp = message_stamp(msg)
        info = None
        check = self.checks.get(raw.topic)
        if check is not None:
            try:
                info = check(msg, raw.msgtype)
            except Exception as exc:  # noqa: BLE001  (a damaged message: skipped and counted, never fatal)
                self.reader.reject(raw.topic, _reason(exc))
                if stamp is not None:
                    entry.rejected.add(stamp)
                return
        if stamp is None:
            entry.unstamped.setdefault(raw.receive_ns, raw.locator)
        elif stamp in entry.index:
            entry.duplicates += 1
        else:
            entry.index[stamp] = IndexEntry(raw.receive_ns, raw.locator, info)

    def _add_transforms(self, msg: Any, topic: str) -> None:
        for tf in msg.transforms:
            if tf.header.frame_id.lstrip("/") != self.tf_parent.lstrip("/"):
                continue
            t, q = tf.transform.translation, tf.transform.rotation
            value = (float(t.x), float(t.y), float(t.z), float(q.x), float(q.y), float(q.z), float(q.w))
            if not all(math.isfinite(v) for v in value) or not any(value[3:]):
                self.reader.reject(topic, f"transform {tf.child_frame_id}: non-finite values or a zero quaternion")
                continue
            child = tf.child_frame_id.lstrip("/")
            if topic == TF_STATIC_TOPIC:
                self.tf_static[child] = value
            else:
                self.tf.setdefault((child, stamp_ns(tf.header.stamp)), value)

    def transform(self, child: str, stamp: int) -> tuple[tuple[float, ...], str] | None:
        """(translation + quaternion of `child` in the parent frame, "tf" | "tf_static") at `stamp`, or None."""
        child = child.lstrip("/")
        if (child, stamp) in self.tf:
            return self.tf[(child, stamp)], "tf"
        if child in self.tf_static:
            return self.tf_static[child], "tf_static"
        return None

    def has_dynamic_transforms(self, child: str) -> bool:
        """Whether /tf carried a transform of `child` at any stamp."""
        child = child.lstrip("/")
        return any(c == child for c, _ in self.tf)

    def lost_messages(self, topic: str) -> bool:
        """Whether messages of `topic` may have been lost to damage (a frame lacking one is then not trusted)."""
        return self.report.lost_messages(topic)

    def read(self, topic: str, stamp: int, receive_ns: int | None = None) -> Any:
        """The message of `topic` with header stamp `stamp` (or, for a stampless one, received at `receive_ns`)."""
        entry = self.topics[topic]
        locator = entry.index[stamp].locator if receive_ns is None else entry.unstamped[receive_ns]
        try:
            return self.reader.deserialize(self.reader.fetch(topic, locator))
        except (BagError, DecodeError) as exc:  # read and decoded when indexing: only a changing file gets here
            raise DatasetError(f"bag: {self.path}: {exc}") from None

    def has(self, topic: str, stamp: int, receive_ns: int) -> bool:
        """Whether `lookup` finds a message of `topic` for the frame."""
        entry = self.topics.get(topic)
        return entry is not None and (stamp in entry.index or receive_ns in entry.unstamped)

    def lookup(self, topic: str, stamp: int, receive_ns: int) -> Any | None:
        """Message of `topic` with this exact stamp, else a stampless one received with the frame, else None."""
        entry = self.topics.get(topic)
        if entry is None:
            return None
        if stamp in entry.index:
            return self.read(topic, stamp)
        if receive_ns in entry.unstamped:
            return self.read(topic, stamp, receive_ns=receive_ns)
        return None

    def close(self) -> None:
        if getattr(self, "reader", None) is not None:
            self.reader.close()
            self.reader = None

    def __del__(self) -> None:
        self.close()


def decode_labels(msg: Any) -> np.ndarray:
    """A mono8 / 8UC1 label image as (H, W) uint8 (row padding removed); ImageRejected otherwise."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ImageRejected(f"label images must be {' or '.join(LABEL_ENCODINGS)}, got {msg.encoding!r}")
    return image_codec.decode_single_channel(msg, np.uint8)


def decode_color(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == "sensor_msgs/msg/CompressedImage":
        return image_codec.decode_compressed_msg(msg)
    return image_codec.decode_image_msg(msg)


def parse_markers(msg: Any, ns: str) -> list[dict]:
    """True boxes (ADD markers of namespace `ns`) of a MarkerArray as dicts."""
    out = []
    for m in msg.markers:
        if m.ns != ns or m.action != 0:
            continue
        match = VISIBLE_RE.search(m.text or "")
        p, s = m.pose.position, m.scale
        out.append({"id": int(m.id), "position": [float(p.x), float(p.y), float(p.z)],
                    "size": [float(s.x), float(s.y), float(s.z)], "text": str(m.text),
                    "visible_pixels": int(match.group(1)) if match else None})
    return out


def mount_from_transform(value: tuple[float, ...]) -> Mount:
    """The camera mount (height, pitch, roll in the node's convention) of the camera's pose in a z-up ground frame:
    translation + quaternion (x, y, z, w); ValueError when it is no valid mount (camera at or below the ground)."""
    return Mount.from_pose(value[:3], quaternion_to_rotation(*value[3:]))


def image_info(msg: Any, msgtype: str) -> tuple[tuple[int, int], str]:
    """Check of the image topic: (height, width) and frame id of a decodable colour image."""
    return decode_color(msg, msgtype).shape[:2], str(msg.header.frame_id)


def labels_info(msg: Any, _msgtype: str = "") -> tuple[tuple[int, int], np.ndarray]:
    """Check of the labels topic: (height, width) and the label values present (sorted)."""
    labels = decode_labels(msg)
    return labels.shape, np.flatnonzero(np.bincount(labels.ravel(), minlength=256))


def depth_info(msg: Any, _msgtype: str = "") -> tuple[int, int]:
    """Check of the depth topic: (height, width) of a decodable depth image."""
    return image_codec.decode_depth_msg(msg).shape


def check_camera_info(msg: Any, _msgtype: str = "") -> None:
    """Check of the camera_info topic: K usable for obstacle placement (9 finite numbers, positive focal lengths)."""
    CameraModel.from_k(np.asarray(msg.k, np.float64), int(msg.width), int(msg.height))


def check_markers(msg: Any, _msgtype: str = "") -> None:
    """Check of the anomalies topic: finite positions and sizes of every marker."""
    for m in msg.markers:
        p, s = m.pose.position, m.scale
        if not all(math.isfinite(float(v)) for v in (p.x, p.y, p.z, s.x, s.y, s.z)):
            raise ValueError(f"marker {m.ns}/{m.id} has a non-finite position or size")


class BagDataset:
    kind = "bag"

    def __init__(self, path: Path, topics: BagTopics = BagTopics(), split: str | None = None) -> None:
        if split not in (None, "all"):
            raise DatasetError(f"bag: a bag has no splits (got split {split!r}); leave it out")
        self.split = "all"
        self.topics = topics
        checks = {topics.image: image_info, topics.labels: labels_info, topics.depth: depth_info,
                  topics.camera_info: check_camera_info, topics.anomalies: check_markers}
        checks = {topic: check for topic, check in checks.items() if topic}
        self.bag = StampIndexedBag(Path(path), list(checks), tf_parent=topics.ground_frame, checks=checks)
        self.root = self.bag.path
        try:
            self._check_topics()
            self.classes = self._classes(topics.classes)
            self.stamps = self._frames()
        except DatasetError:
            self.bag.close()
            raise
        self.duplicates = self.bag.topics[topics.image].duplicates
        info = self.bag.topics.get(topics.camera_info) if topics.camera_info else None
        self._info_stamps = sorted(info.index) if info is not None else []

    def _check_topics(self) -> None:
        topics, bag = self.topics, self.bag
        for key in topics.required:
            topic = getattr(topics, key)
            if topic and topic not in bag.topics:
                raise DatasetError(f"bag: {self.root} has no {key} topic {topic!r}; its topics: {', '.join(bag.available)}")
        image_type = bag.topics[topics.image].msgtype
        if image_type not in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
            raise DatasetError(f"bag: image topic {topics.image} has type {image_type}, not sensor_msgs/msg/Image")
        if bag.topics[topics.labels].msgtype != "sensor_msgs/msg/Image":
            raise DatasetError(f"bag: labels topic {topics.labels} has type {bag.topics[topics.labels].msgtype}, "
                               "not sensor_msgs/msg/Image (mono8)")

    def _frames(self) -> list[int]:
        """Header stamps of the usable frames. Sets `unlabelled` (images without a label image) and `dropped`
        (reason -> frames left out because a message of theirs was damaged or does not fit the others)."""
        image = self.bag.topics[self.topics.image]
        frames, self.unlabelled, self.dropped = [], 0, {}
        for stamp in sorted(set(image.index) | image.rejected):
            reason = self._drop_reason(stamp)
            if reason is None:
                frames.append(stamp)
            elif reason is UNLABELLED:
                self.unlabelled += 1
            else:
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if not frames:
            raise DatasetError(self._no_frames_message(len(set(image.index) | image.rejected)))
        return frames

    def _drop_reason(self, stamp: int) -> str | None:
        """Why the frame at `stamp` cannot be scored (None: it can); UNLABELLED when it simply has no labels."""
        t, bag = self.topics, self.bag
        image, labels = bag.topics[t.image], bag.topics[t.labels]
        if stamp in image.rejected and stamp not in image.index:
            return f"image rejected ({t.image})"
        if stamp not in labels.index:
            if stamp in labels.rejected:
                return f"label image rejected ({t.labels})"
            return f"no label image ({t.labels} damaged)" if bag.lost_messages(t.labels) else UNLABELLED
        (h, w), frame_id = image.index[stamp].info
        (lh, lw), values = labels.index[stamp].info
        if (lh, lw) != (h, w):
            return f"the labels are {lw}x{lh} but the image is {w}x{h}"
        bad = self._bad_label_values(values)
        if bad is not None:
            bag.reader.reject(t.labels, bad)
            return f"label values out of range ({t.labels})"
        receive_ns = image.index[stamp].receive_ns
        for key in ("depth", "anomalies", "camera_info"):
            topic = getattr(t, key)
            entry = bag.topics.get(topic) if topic else None
            if entry is None:
                continue
            if stamp in entry.rejected:
                return f"{key} rejected ({topic})"
            if key != "camera_info" and not bag.has(topic, stamp, receive_ns) and bag.lost_messages(topic):
                return f"no {key} message ({topic} damaged)"
            if key == "depth" and stamp in entry.index and entry.index[stamp].info != (h, w):
                dh, dw = entry.index[stamp].info
                return f"the depth image is {dw}x{dh}, the image {w}x{h}"
        transform = bag.transform(frame_id, stamp)
        if (bag.has_dynamic_transforms(frame_id) and (transform is None or transform[1] != "tf")
                and bag.lost_messages(TF_TOPIC)):
            return f"no {TF_TOPIC} transform ({TF_TOPIC} damaged)"
        if transform is not None:
            try:
                mount_from_transform(transform[0])
            except ValueError as exc:
                return f"no camera mount from /{transform[1]}: {exc}"
        return None

    def _bad_label_values(self, values: np.ndarray) -> str | None:
        """With known classes, the reason when label values other than 0..K-1, anomaly_id, 255 (void) are present."""
        if self.classes is None:
            return None
        allowed = set(range(len(self.classes))) | {self.topics.anomaly_id, VOID}
        if all(int(v) in allowed for v in values):
            return None
        return (f"label values other than 0..{len(self.classes) - 1} (classes), {self.topics.anomaly_id} (anomaly), "
                f"{VOID} (void)")

    def _no_frames_message(self, images: int) -> str:
        t = self.topics
        if not self.dropped:
            return (f"bag: {self.root}: none of the {images} image(s) on {t.image} has a label image with the same "
                    f"header stamp on {t.labels}")
        dropped = ", ".join(f"{reason}: {n}" for reason, n in self.dropped.items())
        skipped = [line.strip() for line in self.bag.report.lines()[1:]]
        return (f"bag: {self.root}: no usable frame among the {images} image(s) on {t.image}: {dropped}"
                + (f"; {self.unlabelled} without a label image" if self.unlabelled else "") + "; " + "; ".join(skipped))

    def reading(self) -> dict:
        """How the bag was read and what was skipped (for metrics.json): the reader's report and the frames."""
        image = self.bag.topics[self.topics.image]
        return {**self.bag.report.as_dict(),
                "frames": {"images": len(set(image.index) | image.rejected), "used": len(self.stamps),
                           "unlabelled": self.unlabelled, "duplicates": self.duplicates, "dropped": dict(self.dropped)}}

    def reading_lines(self) -> list[str]:
        """`reading()` for a console."""
        frames = self.reading()["frames"]
        line = (f"  frames: {frames['used']} of {frames['images']} used; {frames['unlabelled']} without a label image, "
                f"{frames['duplicates']} duplicate stamp(s)")
        if self.dropped:
            line += "; dropped: " + ", ".join(f"{reason}: {n}" for reason, n in self.dropped.items())
        return [*self.bag.report.lines(), line]

    def _classes(self, spec: Any) -> list[str] | None:
        if isinstance(spec, (list, tuple)):
            return [str(c) for c in spec]
        if spec in (None, "none"):
            return None
        if spec == "sim" or (spec == "auto" and self.topics.anomalies in self.bag.topics
                             and self.topics.anomaly_id == SIM_ANOMALY_ID):
            from densehybrid_ros.sim.taxonomy import CLASS_NAMES

            return list(CLASS_NAMES)
        if spec == "auto":
            return None
        raise DatasetError(f"bag: classes must be 'auto', 'sim', 'none' or a list of names, got {spec!r}")

    def __len__(self) -> int:
        return len(self.stamps)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of frame `index`'s image, known from indexing (no read)."""
        return self.bag.topics[self.topics.image].index[self.stamps[index]].info[0]

    def close(self) -> None:
        self.bag.close()

    def __enter__(self) -> "BagDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _camera_info(self, stamp: int) -> dict | None:
        if not self._info_stamps:
            return None
        i = bisect.bisect_right(self._info_stamps, stamp) - 1
        msg = self.bag.read(self.topics.camera_info, self._info_stamps[max(i, 0)])
        return {"k": [float(v) for v in np.asarray(msg.k).reshape(-1)], "width": int(msg.width), "height": int(msg.height)}

    def __getitem__(self, index: int) -> EvalSample:
        if not 0 <= index < len(self.stamps):
            raise IndexError(index)
        t = self.topics
        stamp = self.stamps[index]
        name = f"{stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}"
        image_msg = self.bag.read(t.image, stamp)
        try:  # every message was decoded and checked when indexing (see _drop_reason): this cannot fail
            image = decode_color(image_msg, self.bag.topics[t.image].msgtype)
            labels = decode_labels(self.bag.read(t.labels, stamp))
            depth = None
            if t.depth and t.depth in self.bag.topics and stamp in self.bag.topics[t.depth].index:
                depth = image_codec.decode_depth_msg(self.bag.read(t.depth, stamp))
        except ImageRejected as exc:
            raise DatasetError(f"bag: {self.root}: at {name}: {exc} (the file changed since it was opened?)") from None
        ood = np.full(labels.shape, OOD_INLIER, np.uint8)
        ood[labels == t.anomaly_id] = OOD_ANOMALY
        ood[labels == VOID] = VOID
        frame_id = str(image_msg.header.frame_id)
        receive_ns = self.bag.topics[t.image].index[stamp].receive_ns
        markers = self.bag.lookup(t.anomalies, stamp, receive_ns) if t.anomalies else None
        transform = self.bag.transform(frame_id, stamp)
        extras = {"stamp_ns": stamp, "frame_id": frame_id, "camera_info": self._camera_info(stamp),
                  "anomalies": parse_markers(markers, t.anomaly_ns) if markers is not None else None,
                  "mount": mount_from_transform(transform[0]) if transform is not None else None,
                  "mount_source": transform[1] if transform is not None else None}
        return EvalSample(name=name, image=image, ood=ood, semantic=labels, depth=depth, extras=extras)


def open_bag(path: Path, split: str | None = None, **overrides: Any) -> BagDataset:
    """A bag or a YAML spec naming one (see the module doc); `overrides` replace BagTopics fields."""
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml") and path.name != "metadata.yaml":
        bag, topics = BagTopics.from_yaml(path)
    else:
        bag, topics = path, BagTopics()
    if overrides:
        required = set(topics.required) | {k for k in ("depth", "camera_info", "anomalies") if overrides.get(k)}
        topics = BagTopics(**{**{f: getattr(topics, f) for f in topics.__dataclass_fields__}, **overrides,
                              "required": tuple(sorted(required))})
    return BagDataset(bag, topics, split)


@register("bag")
def _open(root: Path, split: str | None) -> BagDataset:
    return open_bag(root, split)
