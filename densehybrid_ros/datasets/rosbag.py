"""Kind `bag`: camera images and ground-truth label images from a ROS 2 (or ROS 1) bag, read with rosbags.

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

Sample: ``image`` RGB uint8 (decoded by the node's codec, densehybrid_ros.node.image_codec), ``semantic`` the
label image as stored, ``ood`` anomaly -> 1, 255 -> 255, everything else 0, ``depth`` float32 metres with NaN
where invalid (the sim's +inf sky included: NaN = unknown is the EvalSample convention). ``extras``: ``stamp_ns``,
``frame_id``, ``camera_info`` (k, width, height) or None, ``anomalies`` (list of dicts: id, position, size in the
image frame, text, visible_pixels parsed from the sim's ``visible_px=N`` text) or None when the bag has no
markers for the frame, ``mount`` (height, pitch, roll in the node's convention, from the ground frame to the
camera frame on /tf at the image stamp, else /tf_static) or None.

Memory: opening the dataset makes one pass over the bag and keeps only an index per topic (header stamp ->
receive time, a few integers per message; /tf transforms between the two frames as 7 numbers). ``dataset[i]``
reads the few messages of one frame through the reader's time-range query (start = stop - 1 = the receive time;
an indexed query in sqlite3, the chunk index in mcap), so memory is one frame whatever the bag's length, and
frames can be read in any order. The reader stays open until ``close()`` (or garbage collection).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from densehybrid_ros.datasets.base import OOD_ANOMALY, OOD_INLIER, VOID, DatasetError, EvalSample, register
from densehybrid_ros.node import image_codec
from densehybrid_ros.node.image_codec import ImageRejected
from densehybrid_ros.node.obstacles import pitch_roll_from_rotation, quaternion_to_rotation

SIM_ANOMALY_ID = 15  # densehybrid_ros.sim.taxonomy.ANOMALY_ID (checked by a test; not imported: no pybullet needed)
LABEL_ENCODINGS = ("mono8", "8UC1")
TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"
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


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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


def resolve_bag_path(path: Path) -> Path:
    """A rosbag2 directory for its storage file, else the path itself."""
    path = Path(path)
    if path.is_file() and (path.name == "metadata.yaml" or (
            path.suffix in (".db3", ".mcap") and (path.parent / "metadata.yaml").is_file())):
        return path.parent
    return path


def _rosbags_error(path: Path, exc: Exception) -> DatasetError:
    return DatasetError(f"bag: cannot read {path}: {type(exc).__name__}: {exc} (truncated or not a bag?)")


@dataclass
class _Topic:
    connections: list
    msgtype: str
    index: dict[int, int] = field(default_factory=dict)  # header stamp -> receive time
    unstamped: dict[int, int] = field(default_factory=dict)  # receive time -> receive time (stampless MarkerArrays)
    duplicates: int = 0


class StampIndexedBag:
    """A bag opened with rosbags' AnyReader, with per-topic header-stamp indexes and lazy reads of single messages.

    `topics`: the topics to index; absent ones are simply not in `self.topics` (the caller decides whether that
    is an error). /tf and /tf_static are parsed during the indexing pass (transforms `parent` -> any child)."""

    def __init__(self, path: Path, topics: list[str], tf_parent: str | None = None) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = resolve_bag_path(path)
        if not self.path.exists():
            raise DatasetError(f"bag: {self.path} does not exist")
        try:
            self.reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_KILTED))
            self.reader.open()
        except Exception as exc:  # noqa: BLE001  rosbags raises many kinds (ReaderError, apsw, struct, OSError)
            self.reader = None
            raise _rosbags_error(self.path, exc) from None
        self.available = sorted({c.topic for c in self.reader.connections})
        self.topics: dict[str, _Topic] = {}
        for conn in self.reader.connections:
            if conn.topic in topics:
                entry = self.topics.setdefault(conn.topic, _Topic([], conn.msgtype))
                if conn.msgtype != entry.msgtype:
                    self.close()
                    raise DatasetError(f"bag: {self.path}: topic {conn.topic} has two types ({entry.msgtype}, {conn.msgtype})")
                entry.connections.append(conn)
        self.tf_parent = tf_parent
        self.tf: dict[tuple[str, int], tuple[float, ...]] = {}  # (child, stamp) -> translation + quaternion
        self.tf_static: dict[str, tuple[float, ...]] = {}
        tf_conns = [c for c in self.reader.connections if tf_parent and c.topic in (TF_TOPIC, TF_STATIC_TOPIC)
                    and c.msgtype == "tf2_msgs/msg/TFMessage"]
        try:
            self._index(tf_conns)
        except DatasetError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise _rosbags_error(self.path, exc) from None

    def _index(self, tf_conns: list) -> None:
        wanted = [c for t in self.topics.values() for c in t.connections] + tf_conns
        if not wanted:
            return
        for conn, receive_ns, raw in self.reader.messages(connections=wanted):
            msg = self.reader.deserialize(raw, conn.msgtype)
            if conn in tf_conns:
                self._add_transforms(msg, static=conn.topic == TF_STATIC_TOPIC)
                continue
            entry = self.topics[conn.topic]
            stamp = message_stamp(msg)
            if stamp is None:
                entry.unstamped.setdefault(receive_ns, receive_ns)
            elif stamp in entry.index:
                entry.duplicates += 1
            else:
                entry.index[stamp] = receive_ns

    def _add_transforms(self, msg: Any, static: bool) -> None:
        for tf in msg.transforms:
            if tf.header.frame_id.lstrip("/") != self.tf_parent.lstrip("/"):
                continue
            t, q = tf.transform.translation, tf.transform.rotation
            value = (float(t.x), float(t.y), float(t.z), float(q.x), float(q.y), float(q.z), float(q.w))
            child = tf.child_frame_id.lstrip("/")
            if static:
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

    def read(self, topic: str, stamp: int, receive_ns: int | None = None) -> Any:
        """The message of `topic` with header stamp `stamp` (or, for a stampless one, received at `receive_ns`)."""
        entry = self.topics[topic]
        t = entry.index[stamp] if receive_ns is None else receive_ns
        try:
            for conn, _, raw in self.reader.messages(connections=entry.connections, start=t, stop=t + 1):
                msg = self.reader.deserialize(raw, conn.msgtype)
                if receive_ns is not None or message_stamp(msg) == stamp:
                    return msg
        except Exception as exc:  # noqa: BLE001
            raise _rosbags_error(self.path, exc) from None
        raise DatasetError(f"bag: {self.path}: message of {topic} at stamp {stamp} vanished between index and read")

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
            try:
                self.reader.close()
            except Exception:  # noqa: BLE001  (closing a half-open reader)
                pass
            self.reader = None

    def __del__(self) -> None:
        self.close()


def decode_labels(msg: Any) -> np.ndarray:
    """A mono8 / 8UC1 label image as (H, W) uint8 (row padding removed); ImageRejected otherwise."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ImageRejected(f"label images must be {' or '.join(LABEL_ENCODINGS)}, got {msg.encoding!r}")
    rows = image_codec._rows(msg.encoding, int(msg.width), int(msg.height), int(msg.step), msg.data, 1)
    return np.ascontiguousarray(rows).reshape(int(msg.height), int(msg.width)).copy()


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


def mount_from_transform(value: tuple[float, ...]) -> dict:
    """Camera height and (pitch, roll) in the node's convention from the camera's pose in a z-up ground frame."""
    rotation = quaternion_to_rotation(*value[3:])
    pitch, roll = pitch_roll_from_rotation(rotation)
    return {"height": float(value[2]), "pitch": pitch, "roll": roll}


class BagDataset:
    kind = "bag"

    def __init__(self, path: Path, topics: BagTopics = BagTopics(), split: str | None = None) -> None:
        if split not in (None, "all"):
            raise DatasetError(f"bag: a bag has no splits (got split {split!r}); leave it out")
        self.split = "all"
        self.topics = topics
        names = [t for t in (topics.image, topics.labels, topics.depth, topics.camera_info, topics.anomalies) if t]
        self.bag = StampIndexedBag(Path(path), names, tf_parent=topics.ground_frame)
        self.root = self.bag.path
        for key in topics.required:
            topic = getattr(topics, key)
            if topic and topic not in self.bag.topics:
                self.bag.close()
                raise DatasetError(f"bag: {self.root} has no {key} topic {topic!r}; its topics: {', '.join(self.bag.available)}")
        image_type = self.bag.topics[topics.image].msgtype
        if image_type not in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
            self.bag.close()
            raise DatasetError(f"bag: image topic {topics.image} has type {image_type}, not sensor_msgs/msg/Image")
        if self.bag.topics[topics.labels].msgtype != "sensor_msgs/msg/Image":
            self.bag.close()
            raise DatasetError(f"bag: labels topic {topics.labels} has type {self.bag.topics[topics.labels].msgtype}, "
                               "not sensor_msgs/msg/Image (mono8)")
        images = self.bag.topics[topics.image].index
        labels = self.bag.topics[topics.labels].index
        self.stamps = sorted(s for s in images if s in labels)
        self.unlabelled = len(images) - len(self.stamps)
        self.duplicates = self.bag.topics[topics.image].duplicates
        if not self.stamps:
            self.bag.close()
            raise DatasetError(f"bag: {self.root}: none of the {len(images)} image(s) on {topics.image} has a label image "
                               f"with the same header stamp on {topics.labels}")
        info = self.bag.topics.get(topics.camera_info) if topics.camera_info else None
        self._info_stamps = sorted(info.index) if info is not None else []
        self.classes = self._classes(topics.classes)

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
        try:
            image = decode_color(image_msg, self.bag.topics[t.image].msgtype)
        except ImageRejected as exc:
            raise DatasetError(f"bag: {self.root}: image {t.image} at {name}: {exc}") from None
        try:
            labels = decode_labels(self.bag.read(t.labels, stamp))
        except ImageRejected as exc:
            raise DatasetError(f"bag: {self.root}: labels {t.labels} at {name}: {exc}") from None
        if labels.shape != image.shape[:2]:
            raise DatasetError(f"bag: {self.root}: at {name} the labels are {labels.shape[1]}x{labels.shape[0]} but the "
                               f"image is {image.shape[1]}x{image.shape[0]}")
        depth = None
        if t.depth and t.depth in self.bag.topics and stamp in self.bag.topics[t.depth].index:
            try:
                depth = image_codec.decode_depth_msg(self.bag.read(t.depth, stamp))
            except ImageRejected as exc:
                raise DatasetError(f"bag: {self.root}: depth {t.depth} at {name}: {exc}") from None
            if depth.shape != labels.shape:
                raise DatasetError(f"bag: {self.root}: at {name} the depth image is {depth.shape[1]}x{depth.shape[0]}, "
                                   f"the image {image.shape[1]}x{image.shape[0]}")
        ood = np.full(labels.shape, OOD_INLIER, np.uint8)
        ood[labels == t.anomaly_id] = OOD_ANOMALY
        ood[labels == VOID] = VOID
        frame_id = str(image_msg.header.frame_id)
        receive_ns = self.bag.topics[t.image].index[stamp]
        markers = self.bag.lookup(t.anomalies, stamp, receive_ns) if t.anomalies else None
        transform = self.bag.transform(frame_id, stamp)
        mount = None
        if transform is not None:
            mount = {**mount_from_transform(transform[0]), "source": transform[1]}
        extras = {"stamp_ns": stamp, "frame_id": frame_id, "camera_info": self._camera_info(stamp),
                  "anomalies": parse_markers(markers, t.anomaly_ns) if markers is not None else None, "mount": mount}
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
