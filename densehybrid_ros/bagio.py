"""Reading bags that may be damaged: the one bag reader of densehybrid-eval-bag (through the `bag` dataset) and
densehybrid-replay.

Bags from the field are often damaged. A recorder killed before it closed the bag leaves an mcap file without its
summary and footer (rosbags: "File end magic is invalid") or a sqlite3 file cut short (SQLite: "database disk image
is malformed"), usually without metadata.yaml; an interrupted copy or a bad sector does the same, and flipped bytes
spoil single messages. `BagReader` opens a bag with rosbags' AnyReader (indexed, in time order). When AnyReader
refuses the bag, or fails part-way through it, the storage file is read again by a salvage reader that goes
sequentially up to the damage:

- mcap: the records in file order (all a file without summary holds). Complete records of a chunk cut by the end
  of the file are read; a chunk that fails its checksum, does not decompress or whose records do not parse is
  skipped (its messages counted as unreadable where they can be counted) and reading goes on with the next record;
  reading stops where the record framing itself breaks (a record cut by the end of the file, an unknown opcode).
- sqlite3: the rows of the `messages` table in row-id order (insertion order). The file is opened read-only and
  immutable with `PRAGMA writable_schema=ON`, which lets SQLite open a file whose header promises more pages than
  it holds. A row whose data cannot be read is skipped and counted; reading stops where the table's b-tree breaks.

After a part-way failure of AnyReader, the salvage reader continues after the last message AnyReader delivered
(same receive time and bytes are not delivered twice).

What was lost is said by `BagReader.report` (a `ReadReport`, `lines()` for consoles, `as_dict()` for metrics.json):
where and why reading stopped, how many bytes of the file were readable, and per topic how many messages were read,
how many the bag's metadata promised (metadata.yaml, the mcap summary or the sqlite3 tables when AnyReader opened
the bag), and how many were skipped: unreadable in storage, failing to deserialize (`decode`), or rejected by the
caller's own checks (`reject`). Per-topic counts describe one pass over the bag (each pass starts them afresh).
Nothing here raises for a damaged message; `BagError` is raised only for a bag that cannot be read at all.
"""
from __future__ import annotations

import sqlite3
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

STORAGES = {".mcap": "mcap", ".db3": "sqlite3", ".bag": "rosbag1"}
MAX_REASONS = 5  # distinct skip reasons kept per topic; further ones are counted under OTHER_REASONS
OTHER_REASONS = "(other reasons)"
MAX_DAMAGE_NOTES = 10
MAX_CHUNK_BYTES = 1 << 30  # an mcap chunk claiming more is taken for broken framing
PROBE_ROWS = 4096  # sqlite3: row ids tried one by one after a break in the messages table's b-tree

MCAP_MAGIC = b"\x89MCAP0\r\n"
OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x02, 0x03, 0x04, 0x05, 0x06
MCAP_OPCODES = set(range(0x01, 0x10)) | set(range(0x80, 0x100))  # defined by the spec, and private records
MESSAGE_HEADER = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
CHUNK_HEADER = struct.Struct("<QQQI")  # message start, message end, uncompressed size, uncompressed crc


class BagError(ValueError):
    """The bag cannot be read at all; the text names the path and why."""


class DecodeError(ValueError):
    """A message's bytes do not deserialize as its type."""


# ------------------------------------------------------------------ paths and metadata
def resolve_bag_path(path: Path) -> Path:
    """A rosbag2 directory for its storage file (or metadata.yaml), else the path itself."""
    path = Path(path)
    if path.is_file() and (path.name == "metadata.yaml" or (
            path.suffix in (".db3", ".mcap") and (path.parent / "metadata.yaml").is_file())):
        return path.parent
    return path


def storage_files(path: Path, metadata: dict | None) -> list[Path]:
    """The storage files of a bag: the path itself, or a directory's files in metadata.yaml order when it names
    existing ones, else its .mcap / .db3 files in name order (split bags: name_0, name_1, ...)."""
    if path.is_file():
        return [path]
    if metadata:
        named = [path / Path(str(name)).name for name in metadata.get("relative_file_paths") or []]
        named = [f for f in named if f.is_file()]
        if named:
            return named
    found = [f for f in path.iterdir() if f.is_file() and f.suffix in (".mcap", ".db3")]
    return sorted(found, key=lambda f: (len(f.name), f.name))


def read_metadata(path: Path) -> tuple[dict | None, str]:
    """(rosbag2_bagfile_information of PATH/metadata.yaml or None, "ok" | "missing" | "unreadable: ...")."""
    yaml_path = path / "metadata.yaml"
    if not path.is_dir():
        return None, "none (a single storage file)"
    if not yaml_path.is_file():
        return None, "missing"
    try:
        info = yaml.safe_load(yaml_path.read_text())["rosbag2_bagfile_information"]
        if not isinstance(info, dict):
            raise TypeError("not a mapping")
    except Exception as exc:  # noqa: BLE001  (YAML, encoding, missing key, wrong type)
        return None, f"unreadable: {type(exc).__name__}: {exc}"
    return info, "ok"


def expected_counts(metadata: dict | None) -> dict[str, int]:
    """Messages per topic that a rosbag2 metadata mapping promises ({} when it says nothing usable)."""
    out: dict[str, int] = {}
    for item in (metadata or {}).get("topics_with_message_count") or []:
        try:
            topic = str(item["topic_metadata"]["name"])
            out[topic] = out.get(topic, 0) + int(item["message_count"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


# ------------------------------------------------------------------ the report
@dataclass
class TopicReport:
    """One topic's messages in one pass: `read` from storage, of which `decode_errors` failed to deserialize and
    `rejected` failed the caller's checks; `unreadable`: present in storage, bytes not readable."""

    msgtype: str
    expected: int | None = None
    read: int = 0
    unreadable: int = 0
    decode_errors: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.unreadable + self.decode_errors + self.rejected

    @property
    def missing(self) -> int | None:
        """Messages the metadata promised that were never reached (cut off), when it promised any."""
        return None if self.expected is None else max(self.expected - self.read - self.unreadable, 0)

    def note(self, reason: str) -> None:
        key = reason if reason in self.reasons or len(self.reasons) < MAX_REASONS else OTHER_REASONS
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def reset(self) -> None:
        self.read = self.unreadable = self.decode_errors = self.rejected = 0
        self.reasons = {}

    def as_dict(self) -> dict:
        return {"msgtype": self.msgtype, "read": self.read, "expected": self.expected, "missing": self.missing,
                "unreadable": self.unreadable, "decode_errors": self.decode_errors, "rejected": self.rejected,
                "skipped": self.skipped, "reasons": dict(self.reasons)}

    def line(self, topic: str) -> str:
        text = f"{topic}: {self.read} read"
        if self.expected is not None:
            text += f" of {self.expected} expected" + (f" ({self.missing} missing)" if self.missing else "")
        parts = [f"{n} {what}" for n, what in ((self.unreadable, "unreadable"), (self.decode_errors, "undecodable"),
                                               (self.rejected, "rejected")) if n]
        if parts:
            reasons = "; ".join(f"{r} ({n})" for r, n in self.reasons.items())
            text += f"; skipped {', '.join(parts)}: {reasons}"
        return text


@dataclass
class ReadReport:
    """How a bag was read and what was lost (see the module doc)."""

    path: str
    storage: str
    reader: str = "rosbags"
    metadata: str = "ok"
    damage: list[str] = field(default_factory=list)  # damage found, in reading order (first MAX_DAMAGE_NOTES)
    stopped_early: bool = False  # reading ended at damage before the end of the storage
    readable_bytes: int | None = None  # salvage: bytes read sequentially before reading stopped
    file_bytes: int | None = None
    declared_bytes: int | None = None  # sqlite3: the size the file's header declares
    unattributed: int = 0  # damaged regions skipped whose messages' topics are unknown (e.g. undecompressable chunk)
    topics: dict[str, TopicReport] = field(default_factory=dict)
    read_topics: set[str] | None = None  # the topics of the last pass (None before any): those reported

    def reported(self) -> list[tuple[str, TopicReport]]:
        """(topic, counts) of the topics the last pass read (all of the bag's before any pass), by name."""
        return sorted((name, t) for name, t in self.topics.items()
                      if self.read_topics is None or name in self.read_topics)

    @property
    def damaged(self) -> bool:
        return bool(self.damage) or self.stopped_early or any(t.skipped for t in self.topics.values())

    def note_damage(self, text: str) -> None:
        if len(self.damage) < MAX_DAMAGE_NOTES:
            self.damage.append(text)

    def topic(self, name: str, msgtype: str = "") -> TopicReport:
        return self.topics.setdefault(name, TopicReport(msgtype))

    def lost_messages(self, topic: str) -> bool:
        """Whether messages of `topic` may have been lost to damage (so a frame lacking one is not trusted)."""
        t = self.topics.get(topic)
        return self.stopped_early or self.unattributed > 0 or (t is not None and t.unreadable + t.decode_errors > 0)

    def as_dict(self) -> dict:
        return {"path": self.path, "storage": self.storage, "reader": self.reader, "metadata": self.metadata,
                "damaged": self.damaged, "damage": list(self.damage), "stopped_early": self.stopped_early,
                "readable_bytes": self.readable_bytes, "file_bytes": self.file_bytes,
                "declared_bytes": self.declared_bytes, "unattributed_damaged_regions": self.unattributed,
                "topics": {name: t.as_dict() for name, t in self.reported()}}

    def lines(self) -> list[str]:
        state = "damaged" if self.damaged else "intact"
        head = f"bag {self.path} ({self.storage}): {state}, read by {self.reader}"
        if self.readable_bytes is not None and self.file_bytes:
            head += (f"; sequentially up to byte {self.readable_bytes:,} of {self.file_bytes:,} "
                     f"({100.0 * self.readable_bytes / self.file_bytes:.1f}%)")
        if self.declared_bytes and self.file_bytes is not None and self.declared_bytes > self.file_bytes:
            head += (f"; the file holds {self.file_bytes:,} of the {self.declared_bytes:,} bytes its header declares "
                     f"({100.0 * (1 - self.file_bytes / self.declared_bytes):.1f}% cut off)")
        out = [head]
        if self.metadata != "ok":
            out.append(f"  metadata.yaml: {self.metadata}")
        out += [f"  damage: {d}" for d in self.damage]
        if self.unattributed:
            out.append(f"  {self.unattributed} damaged region(s) skipped whose topics are unknown")
        out += [f"  {t.line(name)}" for name, t in self.reported()]
        return out


# ------------------------------------------------------------------ messages and typestores
@dataclass(frozen=True)
class RawMessage:
    """One message as stored: `locator` lets `BagReader.fetch` read it again later."""

    topic: str
    msgtype: str
    receive_ns: int
    data: bytes
    locator: tuple


def typestore_for(definitions: dict[str, tuple[str, str]], default: Any) -> Any:
    """A typestore with the bag's own message definitions ({msgtype: (encoding, text)}, encodings ros2msg /
    ros2idl, as rosbags' AnyReader reads them), completed by `default` for types the bag does not define."""
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

    types: dict = {}
    for msgtype, (encoding, text) in definitions.items():
        try:
            if encoding == "ros2msg":
                types.update(get_types_from_msg(text, msgtype))
            elif encoding == "ros2idl":
                sep = "=" * 80 + "\n"
                parts = [p.split("\n", 1)[1] for p in text.split(sep)[1:]] if text.startswith(f"{sep}IDL: ") else [text]
                for idl in parts:
                    types.update(get_types_from_idl(idl))
        except Exception:  # noqa: BLE001  (a damaged definition: the default's definition is used instead)
            continue
    store = get_typestore(Stores.EMPTY)
    try:
        store.register(types)
    except Exception:  # noqa: BLE001  (definitions that contradict each other)
        store = get_typestore(Stores.EMPTY)
    store.register({name: value for name, value in default.fielddefs.items() if name not in store.fielddefs})
    return store


# ------------------------------------------------------------------ sources: rosbags (intact), salvage readers
class _RosbagsSource:
    """rosbags' AnyReader. Locator: (tag, receive time, size, crc32): found again with a time-range query."""

    tag = "rosbags"

    def __init__(self, path: Path, default_typestore: Any) -> None:
        from rosbags.highlevel import AnyReader

        self.reader = AnyReader([path], default_typestore=default_typestore)
        self.reader.open()
        self.by_topic: dict[str, list] = {}
        self.expected: dict[str, int] = {}
        for conn in self.reader.connections:
            self.by_topic.setdefault(conn.topic, []).append(conn)
            self.expected[conn.topic] = self.expected.get(conn.topic, 0) + int(conn.msgcount)
        self.connections = list(dict.fromkeys((c.topic, c.msgtype) for c in self.reader.connections))

    def messages(self, topics: set[str]) -> Iterator[RawMessage]:
        conns = [c for c in self.reader.connections if c.topic in topics]
        if not conns:
            return
        for conn, t, raw in self.reader.messages(connections=conns):
            data = bytes(raw)
            yield RawMessage(conn.topic, conn.msgtype, t, data, (self.tag, t, len(data), zlib.crc32(data)))

    def fetch(self, topic: str, locator: tuple) -> bytes:
        _, t, size, crc = locator
        for _, _, raw in self.reader.messages(connections=self.by_topic[topic], start=t, stop=t + 1):
            if len(raw) == size and zlib.crc32(raw) == crc:
                return bytes(raw)
        raise BagError(f"message of {topic} received at {t} vanished")

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        return self.reader.deserialize(data, msgtype)

    def close(self) -> None:
        self.reader.close()


class _Broken(Exception):
    """Record framing that does not hold together; the text says where and why."""


def _string(buf: bytes | memoryview, off: int) -> tuple[str, int]:
    """An mcap string (uint32 length + UTF-8) at `off`: (text, offset after it)."""
    if off + 4 > len(buf):
        raise _Broken("string length cut")
    (n,) = struct.unpack_from("<I", buf, off)
    if off + 4 + n > len(buf):
        raise _Broken("string longer than its record")
    return bytes(buf[off + 4:off + 4 + n]).decode(), off + 4 + n


class _McapSalvage:
    """Sequential mcap reading up to the damage (module doc). Opening scans the files once for schemas, channels and
    the damage (noted in the report then); `messages` walks them again and counts unreadable messages per pass.
    Locator: (tag, file, chunk offset or -1, offset, size); with -1 the offset is in the file (an unchunked message
    or one in an uncompressed chunk), else in the decompressed chunk."""

    tag = "mcap"

    def __init__(self, files: list[Path], report: ReadReport, default_typestore: Any) -> None:
        self.files, self.report = files, report
        self.handles = [open(f, "rb") for f in files]  # noqa: SIM115  (closed in close())
        self.sizes = [f.stat().st_size for f in files]
        self.channels: dict[tuple[int, int], tuple[str, str]] = {}  # (file, channel id) -> (topic, msgtype)
        self.schemas: dict[tuple[int, int], tuple[str, str, str]] = {}  # (file, id) -> (name, encoding, text)
        self._chunk_cache: tuple[tuple[int, int], bytes] | None = None
        self._scanning, self._readable = True, 0
        report.file_bytes, report.readable_bytes = sum(self.sizes), 0
        for i in range(len(files)):
            for _ in self._walk(i, None):
                pass
            report.readable_bytes += self._readable
        self._scanning = False
        definitions = {name: (enc, text) for name, enc, text in self.schemas.values() if text}
        self.typestore = typestore_for(definitions, default_typestore)
        self.connections = list(dict.fromkeys(self.channels.values()))

    def _read(self, i: int, offset: int, size: int) -> bytes:
        f = self.handles[i]
        f.seek(offset)
        return f.read(size)

    def _note(self, text: str, unattributed: bool = False) -> None:
        """Damage found while scanning at opening (the walks of later passes find the same)."""
        if self._scanning:
            self.report.note_damage(text)
            self.report.unattributed += int(unattributed)

    def _cut(self, text: str) -> None:
        """Reading of a file ends here, before its proper end."""
        if self._scanning:
            self.report.note_damage(text)
            self.report.stopped_early = True

    def _records(self, i: int) -> Iterator[tuple[int, int, int, bool]]:
        """(opcode, body offset, body length, complete) of the top-level records of file i up to its footer or the
        damage; the last one may be a chunk cut by the end of the file (complete False). Tracks `_readable`."""
        size, name = self.sizes[i], self.files[i].name
        self._readable = 0
        if self._read(i, 0, 8) != MCAP_MAGIC:
            self._cut(f"{name}: not an mcap file (no magic at its start)")
            return
        pos = 8
        while pos < size:
            self._readable = pos
            head = self._read(i, pos, 9)
            if len(head) < 9:
                self._cut(f"{name}: the file ends inside a record header at byte {pos:,}")
                return
            op, length = head[0], struct.unpack_from("<Q", head, 1)[0]
            if op not in MCAP_OPCODES or (op == OP_CHUNK and length > MAX_CHUNK_BYTES):
                self._cut(f"{name}: record framing broken at byte {pos:,} (opcode 0x{op:02x}, length {length:,}); "
                          "the rest of the file is unreadable")
                return
            if op == OP_FOOTER:
                self._readable = size
                return
            end = pos + 9 + length
            if end > size:
                if op == OP_CHUNK:
                    yield op, pos + 9, size - pos - 9, False
                self._cut(f"{name}: the file ends inside a record (opcode 0x{op:02x}) that starts at byte {pos:,}; "
                          f"{end - size:,} bytes of it are missing")
                return
            yield op, pos + 9, length, True
            pos = end
        self._readable = size
        self._cut(f"{name}: the file ends at byte {size:,} without the mcap summary and footer (recording not closed)")

    def _walk(self, i: int, want: set[str] | None) -> Iterator[RawMessage]:
        """The messages of the topics in `want` (None: none) in file i, registering schemas and channels."""
        for op, off, length, complete in self._records(i):
            if op == OP_CHUNK:
                yield from self._chunk(i, off - 9, self._read(i, off, length), complete, want)
            elif op in (OP_SCHEMA, OP_CHANNEL):
                self._definition(i, op, self._read(i, off, length), f"byte {off - 9:,}")
            elif op == OP_MESSAGE:
                head = MESSAGE_HEADER.size
                place = (-1, off + head, length - head)
                yield from self._message(i, self._read(i, off, min(length, head)), want, place,
                                         lambda o=off + head, n=length - head: self._read(i, o, n))

    def _definition(self, i: int, op: int, body: bytes, where: str) -> None:
        try:
            if op == OP_SCHEMA:
                (sid,) = struct.unpack_from("<H", body, 0)
                name, off = _string(body, 2)
                encoding, off = _string(body, off)
                (n,) = struct.unpack_from("<I", body, off)
                self.schemas[(i, sid)] = (name, encoding, bytes(body[off + 4:off + 4 + n]).decode())
            else:
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, _ = _string(body, 4)
                schema = self.schemas.get((i, sid))
                self.channels[(i, cid)] = (topic, schema[0] if schema else "")
        except (_Broken, struct.error, UnicodeDecodeError) as exc:
            kind = "schema" if op == OP_SCHEMA else "channel"
            self._note(f"{self.files[i].name}: unreadable {kind} record at {where}: {exc}", unattributed=True)

    def _message(self, i: int, header: bytes, want: set[str] | None, place: tuple[int, int, int],
                 data: Callable[[], bytes]) -> Iterator[RawMessage]:
        if len(header) < MESSAGE_HEADER.size:
            self._note(f"{self.files[i].name}: a message record shorter than its header", unattributed=True)
            return
        cid, _, log_time, _ = MESSAGE_HEADER.unpack_from(header, 0)
        channel = self.channels.get((i, cid))
        if channel is None:
            self._note(f"{self.files[i].name}: a message of unknown channel {cid} (log time {log_time})",
                       unattributed=True)
            return
        if want is not None and channel[0] in want:
            yield RawMessage(channel[0], channel[1], log_time, data(), (self.tag, i, *place))

    def _chunk(self, i: int, pos: int, body: bytes, complete: bool, want: set[str] | None) -> Iterator[RawMessage]:
        """The messages of the chunk record at `pos` (`body`: its body, cut short when not `complete`)."""
        where = f"{self.files[i].name}: chunk at byte {pos:,}"
        try:
            _, _, usize, crc = CHUNK_HEADER.unpack_from(body, 0)
            compression, off = _string(body, CHUNK_HEADER.size)
            (rlen,) = struct.unpack_from("<Q", body, off)
        except (_Broken, struct.error, UnicodeDecodeError) as exc:
            self._note(f"{where}: unreadable chunk header ({exc}); chunk skipped", unattributed=True)
            return
        start = off + 8
        stored = body[start:start + rlen]
        whole = complete and len(stored) == rlen
        if compression:
            if not whole:
                self._note(f"{where}: compressed chunk cut short; skipped", unattributed=True)
                return
            records = self._decompress(stored, compression, usize, crc, where)
            if records is not None:
                yield from self._chunk_records(i, records, pos, 0, want, where, whole)
            return
        if whole and crc and zlib.crc32(stored) != crc:
            self._note(f"{where}: checksum mismatch; its messages are skipped as unreadable")
            self._count_unreadable(i, stored, want, "chunk checksum mismatch")
            return
        yield from self._chunk_records(i, stored, -1, pos + 9 + start, want, where, whole)

    def _decompress(self, stored: bytes, compression: str, usize: int, crc: int, where: str) -> bytes | None:
        from rosbags.rosbag2.storage_mcap import decompress  # size and checksum checks included

        try:
            return decompress(stored, compression, usize, crc)
        except Exception as exc:  # noqa: BLE001  (ReaderError, lz4 / zstd errors)
            self._note(f"{where}: does not decompress ({type(exc).__name__}: {exc}); chunk skipped", unattributed=True)
            return None

    @staticmethod
    def _inner(records: bytes) -> Iterator[tuple[int, int, int]]:
        """(opcode, body offset, body length) of the records inside a chunk; _Broken where the framing fails."""
        off = 0
        while off < len(records):
            if off + 9 > len(records):
                raise _Broken(f"a record header is cut at chunk offset {off:,}")
            op, length = records[off], struct.unpack_from("<Q", records, off + 1)[0]
            if op not in MCAP_OPCODES or off + 9 + length > len(records):
                raise _Broken(f"the record at chunk offset {off:,} (opcode 0x{op:02x}, length {length:,}) overruns "
                              "the chunk")
            yield op, off + 9, length
            off += 9 + length

    def _chunk_records(self, i: int, records: bytes, chunk: int, origin: int, want: set[str] | None, where: str,
                       whole: bool) -> Iterator[RawMessage]:
        """Messages of a chunk's records; `chunk` -1: uncompressed, stored in the file from byte `origin` on."""
        head = MESSAGE_HEADER.size
        try:
            for op, off, length in self._inner(records):
                if op in (OP_SCHEMA, OP_CHANNEL):
                    self._definition(i, op, records[off:off + length], where)
                elif op == OP_MESSAGE:
                    place = (chunk, origin + off + head, length - head)
                    yield from self._message(i, records[off:off + head], want, place,
                                             lambda o=off + head, e=off + length: bytes(records[o:e]))
                if chunk < 0:
                    self._readable = max(self._readable, origin + off + length)
        except _Broken as exc:
            if whole:  # a chunk cut by the end of the file ends inside a record by nature (noted as the cut)
                self._note(f"{where}: {exc}; the rest of the chunk is skipped", unattributed=True)

    def _count_unreadable(self, i: int, records: bytes, want: set[str] | None, reason: str) -> None:
        """Counts the messages of an untrustworthy chunk under their topics, in a pass."""
        if want is None:
            return
        try:
            for op, off, _ in self._inner(records):
                if op != OP_MESSAGE:
                    continue
                channel = self.channels.get((i, struct.unpack_from("<H", records, off)[0]))
                if channel is not None and channel[0] in want:
                    entry = self.report.topic(*channel)
                    entry.unreadable += 1
                    entry.note(reason)
        except (_Broken, struct.error):
            pass

    # -- the source interface
    def messages(self, topics: set[str]) -> Iterator[RawMessage]:
        for i in range(len(self.files)):
            yield from self._walk(i, topics)

    def fetch(self, topic: str, locator: tuple) -> bytes:
        _, i, chunk, offset, size = locator
        if chunk < 0:
            return self._read(i, offset, size)
        if self._chunk_cache is None or self._chunk_cache[0] != (i, chunk):
            self._chunk_cache = ((i, chunk), self._decompressed_chunk(i, chunk))
        return self._chunk_cache[1][offset:offset + size]

    def _decompressed_chunk(self, i: int, pos: int) -> bytes:
        (length,) = struct.unpack_from("<Q", self._read(i, pos + 1, 8))
        body = self._read(i, pos + 9, length)
        _, _, usize, crc = CHUNK_HEADER.unpack_from(body, 0)
        compression, off = _string(body, CHUNK_HEADER.size)
        (rlen,) = struct.unpack_from("<Q", body, off)
        records = self._decompress(body[off + 8:off + 8 + rlen], compression, usize, crc, f"chunk at byte {pos:,}")
        if records is None:
            raise BagError(f"{self.files[i]}: the chunk at byte {pos:,} no longer decompresses")
        return records

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        return self.typestore.deserialize_cdr(data, msgtype)

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


def _sqlite_declared_bytes(path: Path) -> int | None:
    """The database size a sqlite3 file's header declares (page size x page count), when its header says it."""
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return None
    (page_size,) = struct.unpack_from(">H", head, 16)
    (change_counter, pages) = struct.unpack_from(">II", head, 24)
    (valid_for,) = struct.unpack_from(">I", head, 92)
    if change_counter != valid_for or not pages:
        return None
    return (65536 if page_size == 1 else page_size) * pages


class _SqliteSalvage:
    """rosbag2 sqlite3 tables read row by row up to the damage (module doc). Locator: (tag, file, row id)."""

    tag = "sqlite3"

    def __init__(self, files: list[Path], report: ReadReport, default_typestore: Any) -> None:
        self.files, self.report = files, report
        self.dbs: list[sqlite3.Connection] = []
        self.topic_ids: list[dict[int, tuple[str, str]]] = []
        self.embedded_metadata: dict | None = None
        self._scanning = True
        definitions: dict[str, tuple[str, str]] = {}
        report.file_bytes = sum(f.stat().st_size for f in files)
        declared = [_sqlite_declared_bytes(f) for f in files]
        report.declared_bytes = sum(declared) if None not in declared else None
        for i, path in enumerate(files):
            db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
            db.execute("PRAGMA writable_schema=ON")  # opens a file cut shorter than its header says (still read-only)
            self.dbs.append(db)
            self.topic_ids.append(self._topics(i, db))
            definitions.update(self._definitions(db))
            self.embedded_metadata = self.embedded_metadata or self._embedded_metadata(db)
            self._walk_rows(i, db)
        self._scanning = False
        self.typestore = typestore_for(definitions, default_typestore)
        self.connections = list(dict.fromkeys(t for ids in self.topic_ids for t in ids.values()))

    def _topics(self, i: int, db: sqlite3.Connection) -> dict[int, tuple[str, str]]:
        try:
            return {int(tid): (str(name), str(msgtype)) for tid, name, msgtype in
                    db.execute("SELECT id, name, type FROM topics")}
        except sqlite3.DatabaseError as exc:
            self.report.note_damage(f"{self.files[i].name}: the topics table is unreadable ({exc}); file skipped")
            self.report.stopped_early = True
            return {}

    @staticmethod
    def _definitions(db: sqlite3.Connection) -> dict[str, tuple[str, str]]:
        try:
            rows = db.execute("SELECT topic_type, encoding, encoded_message_definition FROM message_definitions")
            return {str(t): (str(e), str(d)) for t, e, d in rows if d}
        except sqlite3.DatabaseError:  # an older schema without the table, or a damaged one: the default typestore
            return {}

    @staticmethod
    def _embedded_metadata(db: sqlite3.Connection) -> dict | None:
        """The metadata rosbag2 also writes into the file (table `metadata`, when closing), for the message counts
        when metadata.yaml is missing."""
        try:
            row = db.execute("SELECT metadata FROM metadata ORDER BY id DESC LIMIT 1").fetchone()
            info = yaml.safe_load(row[0])["rosbag2_bagfile_information"] if row else None
        except Exception:  # noqa: BLE001  (no such table, a damaged page, bad YAML)
            return None
        return info if isinstance(info, dict) else None

    def _walk_rows(self, i: int, db: sqlite3.Connection) -> None:
        """Walks the messages table's row ids (not their data) once, noting where its b-tree is damaged."""
        for _ in self._rows(i, db, list(self.topic_ids[i]), data=False) if self.topic_ids[i] else ():
            pass

    def messages(self, topics: set[str]) -> Iterator[RawMessage]:
        for i, db in enumerate(self.dbs):
            ids = [tid for tid, (name, _) in self.topic_ids[i].items() if name in topics]
            for rowid, tid, t, data in self._rows(i, db, ids, data=True) if ids else ():
                topic, msgtype = self.topic_ids[i][tid]
                yield RawMessage(topic, msgtype, int(t), bytes(data), (self.tag, i, rowid))

    def _rows(self, i: int, db: sqlite3.Connection, ids: list[int], data: bool) -> Iterator[tuple]:
        """(row id, topic id, timestamp[, data]) of the topics `ids` in row-id order. Where the walk fails, the next
        row is read by itself: when only its data is damaged, it is counted and skipped; where the b-tree itself
        breaks, the next row readable by its id is looked for (`_next_row`) and the walk resumes after it."""
        columns = "id, topic_id, timestamp" + (", data" if data else "")
        where = f"topic_id IN ({','.join('?' * len(ids))}) AND id > ?"
        after = 0  # rosbag2 row ids start at 1
        while True:
            try:
                for row in db.execute(f"SELECT {columns} FROM messages WHERE {where} ORDER BY id", (*ids, after)):
                    after = row[0]
                    yield row
                return
            except sqlite3.DatabaseError:  # Python's sqlite3 reads a row ahead: the failing row may be a later one
                pass
            following = self._next_row(i, db, after)
            if following is None:
                return
            after = following[0]
            if following[1] not in ids:
                continue
            try:
                yield db.execute(f"SELECT {columns} FROM messages WHERE id = ?", (after,)).fetchone()
            except sqlite3.DatabaseError as exc:  # only this row's data is damaged
                entry = self.report.topic(*self.topic_ids[i][following[1]])
                entry.unreadable += 1
                entry.note(f"row data unreadable ({exc})")

    def _next_row(self, i: int, db: sqlite3.Connection, after: int) -> tuple[int, int] | None:
        """(id, topic id) of the first row after row `after`: by a range query, or, where the table's b-tree breaks
        there, by looking ids up one by one (at most PROBE_ROWS); None at the end of what is readable."""
        try:
            return db.execute("SELECT id, topic_id FROM messages WHERE id > ? ORDER BY id LIMIT 1", (after,)).fetchone()
        except sqlite3.DatabaseError:
            pass
        for rowid in range(after + 1, after + 1 + PROBE_ROWS):
            try:
                row = db.execute("SELECT id, topic_id FROM messages WHERE id = ?", (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is not None:
                self._note(f"{self.files[i].name}: the messages table is damaged after row {after}; rows up to "
                           f"{rowid - 1} are lost, reading goes on from row {rowid}", stopped=False)
                return row
        self._note(f"{self.files[i].name}: the messages table breaks after row {after} (no readable row among the "
                   f"next {PROBE_ROWS:,} ids); the rest is lost", stopped=True)
        return None

    def _note(self, text: str, stopped: bool) -> None:
        """Damage of the table's b-tree, noted when walking it at opening (later walks find the same)."""
        if self._scanning:
            self.report.note_damage(text)
            if stopped:
                self.report.stopped_early = True
            else:
                self.report.unattributed += 1

    def fetch(self, topic: str, locator: tuple) -> bytes:
        _, i, rowid = locator
        row = self.dbs[i].execute("SELECT data FROM messages WHERE id = ?", (rowid,)).fetchone()
        if row is None:
            raise BagError(f"{self.files[i]}: row {rowid} of {topic} vanished")
        return bytes(row[0])

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        return self.typestore.deserialize_cdr(data, msgtype)

    def close(self) -> None:
        for db in self.dbs:
            db.close()


SALVAGE = {"mcap": _McapSalvage, "sqlite3": _SqliteSalvage}


# ------------------------------------------------------------------ the reader
class _Boundary:
    """The last receive time AnyReader delivered and the messages delivered at it, so that the salvage reader taking
    over after a part-way failure delivers nothing twice."""

    def __init__(self) -> None:
        self.t: int | None = None
        self.at_t: set[tuple[str, int, int]] = set()

    def add(self, msg: RawMessage) -> None:
        if msg.receive_ns != self.t:
            self.t, self.at_t = msg.receive_ns, set()
        self.at_t.add(_fingerprint(msg))

    def delivered(self, msg: RawMessage) -> bool:
        if self.t is None or msg.receive_ns > self.t:
            return False
        return msg.receive_ns < self.t or _fingerprint(msg) in self.at_t


def _fingerprint(msg: RawMessage) -> tuple[str, int, int]:
    return msg.topic, len(msg.data), zlib.crc32(msg.data)


class BagReader:
    """A bag (rosbag2 directory, .mcap / .db3 file, ROS 1 .bag) read with rosbags, or salvaged when damaged."""

    def __init__(self, path: Path, default_typestore: Any = None) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.path = resolve_bag_path(Path(path))
        if not self.path.exists():
            raise BagError(f"{self.path} does not exist")
        self.default_typestore = default_typestore or get_typestore(Stores.ROS2_KILTED)
        self.metadata, metadata_state = read_metadata(self.path)
        self.files = storage_files(self.path, self.metadata) if self.path.is_dir() else [self.path]
        kinds = {STORAGES.get(f.suffix, f.suffix) for f in self.files}
        self.report = ReadReport(str(self.path), "/".join(sorted(kinds)) or "unknown", metadata=metadata_state)
        self._sources: dict[str, Any] = {}
        self._primary: Any = None
        self._salvage: Any = None
        error = self._open_rosbags()
        if self._primary is None:
            self._open_salvage(error)
        source = self._primary or self._salvage
        self.connections: list[tuple[str, str]] = list(source.connections)
        self.topics: dict[str, str] = {}
        for topic, msgtype in self.connections:
            self.topics.setdefault(topic, msgtype)
        expected = self._primary.expected if self._primary is not None else self._salvage_expected()
        for topic, msgtype in self.topics.items():
            self.report.topic(topic, msgtype).expected = expected.get(topic)
        self._note_uncommitted()

    def _note_uncommitted(self) -> None:
        """A sqlite3 file with its rollback journal or write-ahead log beside it was not closed: what its writer had
        not committed (with rosbags' writer: everything since opening) is not in the file and cannot be read."""
        for f in self.files:
            for suffix in ("-journal", "-wal"):
                if f.suffix == ".db3" and Path(f"{f}{suffix}").is_file():
                    self.report.note_damage(f"{f.name}{suffix} is present: the recording was not closed, and what it "
                                            "had not committed to the file is lost")
                    self.report.stopped_early = True

    # -- opening
    def _rosbags_candidates(self) -> list[Path]:
        candidates = [self.path] if self.path.is_file() or self.metadata is not None else []
        if self.path.is_dir() and len(self.files) == 1:  # no (usable) metadata.yaml: the storage file alone
            candidates.append(self.files[0])
        return candidates

    def _open_rosbags(self) -> Exception | None:
        error = None
        for candidate in self._rosbags_candidates():
            try:
                self._primary = _RosbagsSource(candidate, self.default_typestore)
            except Exception as exc:  # noqa: BLE001  rosbags raises many kinds (ReaderError, apsw, struct, OSError)
                error = error or exc
                continue
            self._sources[_RosbagsSource.tag] = self._primary
            return None
        return error

    def _open_salvage(self, error: Exception | None, required: bool = True) -> bool:
        """Opens the salvage reader of the storage files after rosbags failed with `error`. When it cannot be
        opened (or finds no topic): BagError if `required` (nothing was read), else False."""
        kinds = {STORAGES.get(f.suffix) for f in self.files}
        why = f"{type(error).__name__}: {error}" if error is not None else "no rosbag2 metadata.yaml or storage file"
        problem = None
        if len(kinds) != 1 or not kinds <= set(SALVAGE):
            problem = "(truncated or not a bag?)"
        else:
            try:
                self._salvage = SALVAGE[kinds.pop()](self.files, self.report, self.default_typestore)
                self._sources[self._salvage.tag] = self._salvage
            except (OSError, sqlite3.Error) as exc:
                problem = f"and salvaging it failed too: {type(exc).__name__}: {exc}"
        if problem is None and not self._salvage.connections and required:
            problem = "and nothing could be salvaged: " + "; ".join(self.report.damage)
        if problem is not None:
            if required:
                self.close()
                raise BagError(f"cannot read {self.path}: {why} {problem}")
            self.report.note_damage(f"the salvage reader cannot take over: {problem}")
            return False
        if self._primary is None:
            self.report.damage.insert(0, f"rosbags refused the bag: {why}")
            self.report.reader = "the salvage reader (sequential, up to the damage)"
        else:
            self.report.reader = "rosbags, then the salvage reader (sequential, up to the damage)"
        return True

    def _salvage_expected(self) -> dict[str, int]:
        embedded = getattr(self._salvage, "embedded_metadata", None)
        return expected_counts(self.metadata) or expected_counts(embedded)

    # -- reading
    def messages(self, topics: Iterable[str] | None = None) -> Iterator[RawMessage]:
        """The messages of `topics` (all when None): AnyReader's in time order, salvaged ones in storage order.
        Starts this pass's per-topic counts afresh."""
        wanted = set(self.topics) if topics is None else set(topics) & set(self.topics)
        for entry in self.report.topics.values():
            entry.reset()
        self.report.read_topics = wanted
        boundary = _Boundary()
        if self._primary is not None and self._salvage is None:
            try:
                for msg in self._primary.messages(wanted):
                    boundary.add(msg)
                    self._count(msg)
                    yield msg
                return
            except Exception as exc:  # noqa: BLE001  (damage found part-way: continue with the salvage reader)
                if not self._fall_back(exc):
                    return
        if self._salvage is None:
            return
        for msg in self._salvage.messages(wanted):
            if not boundary.delivered(msg):
                self._count(msg)
                yield msg

    def _fall_back(self, exc: Exception) -> bool:
        """rosbags failed part-way with `exc`: whether the salvage reader takes over."""
        self.report.note_damage(f"rosbags failed part-way: {type(exc).__name__}: {exc}")
        if self._open_salvage(exc, required=False):
            return True
        self.report.stopped_early = True
        return False

    def _count(self, msg: RawMessage) -> None:
        self.report.topic(msg.topic, msg.msgtype).read += 1

    def fetch(self, topic: str, locator: tuple) -> RawMessage:
        """A message read before (by `messages`) read again from storage by its locator."""
        source = self._sources[locator[0]]
        try:
            data = source.fetch(topic, locator)
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"{self.path}: cannot read a message of {topic} again: {type(exc).__name__}: {exc}") \
                from None
        return RawMessage(topic, self.topics[topic], -1, data, locator)

    def deserialize(self, msg: RawMessage) -> Any:
        """The message object; DecodeError naming the topic when the bytes do not deserialize."""
        try:
            return self._sources[msg.locator[0]].deserialize(msg.data, msg.msgtype)
        except Exception as exc:  # noqa: BLE001  (SerdeError, struct.error, UnicodeDecodeError, numpy ValueError)
            raise DecodeError(f"{msg.topic} ({msg.msgtype}) does not deserialize: {type(exc).__name__}: {exc}") \
                from None

    def decode(self, msg: RawMessage) -> Any | None:
        """The message object, or None (counted under its topic) when it does not deserialize."""
        try:
            return self.deserialize(msg)
        except DecodeError as exc:
            entry = self.report.topic(msg.topic, msg.msgtype)
            entry.decode_errors += 1
            entry.note(str(exc).split(": ", 1)[-1][:200])
            return None

    def reject(self, topic: str, reason: str) -> None:
        """Counts a message of `topic` that deserialized but failed the caller's checks."""
        entry = self.report.topic(topic)
        entry.rejected += 1
        entry.note(reason[:200])

    def close(self) -> None:
        for source in self._sources.values():
            try:
                source.close()
            except Exception:  # noqa: BLE001  (closing a half-open reader)
                pass
        self._sources = {}

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
