"""Read a W&B run file (`run-<id>.wandb`, what an offline run leaves for `wandb sync`) back into wandb's own
protobuf records, for the tracking tests.

wandb 0.31 writes the file from wandb-core (Go) and no longer ships a Python reader for it, so the framing is
read here; what is inside each frame is parsed by wandb's own `Record` class (wandb.proto.wandb_internal_pb2).
The framing is wandb's "transaction log" (wandb-core's core/pkg/leveldb, after LevelDB's log format): a 7-byte
file header (":W&B", magic 0xBEE1, version 0) at the start of the first 32 KiB block, then chunks that never cross
a block: a 7-byte header (CRC-32 (IEEE) of the type byte and the payload, little-endian length, type: full,
first, middle or last piece of a record) and the payload; a block's tail shorter than a chunk header is zeros.
Every chunk's checksum is verified, so a misread frame fails loudly instead of yielding garbage records.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")
FILE_IDENT, FILE_MAGIC, FILE_VERSION = b":W&B", 0xBEE1, 0
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    """The records' bytes, chunks joined. Raises AssertionError on a file that is not a W&B run file or a chunk
    whose checksum does not match."""
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    assert (ident, magic, version) == (FILE_IDENT, FILE_MAGIC, FILE_VERSION), (ident, magic, version)
    position = FILE_HEADER.size
    pending = b""
    while position + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < CHUNK_HEADER.size:
            position += left_in_block  # padding
            continue
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, position)
        if kind == 0 and length == 0:
            break  # zeros: the end of what was written
        start = position + CHUNK_HEADER.size
        chunk = data[start : start + length]
        assert zlib.crc32(bytes([kind]) + chunk) == checksum, f"bad checksum of the chunk at byte {position}"
        position = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise AssertionError(f"chunk of unknown type {kind} at byte {position - length}")


def read_records(path: Path) -> list[Any]:
    """Every record of the run file at `path`, as wandb_internal_pb2.Record messages, in order."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else str(item.key)


def config_of(records: list[Any]) -> dict[str, Any]:
    """The run's config: the run record's, then every config update, in order (values JSON-decoded)."""
    config: dict[str, Any] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        updates = (
            record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        )
        for item in updates:
            config[_key(item)] = json.loads(item.value_json)
    return config


def history_of(records: list[Any]) -> dict[str, list[tuple[int, float]]]:
    """Every logged series: name -> [(step, value)], from the history records (their `_step`)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        values = {_key(item): json.loads(item.value_json) for item in record.history.item}
        step = int(values.pop("_step", record.history.step.num))
        for name, value in values.items():
            if not name.startswith("_") and isinstance(value, int | float):
                series.setdefault(name, []).append((step, float(value)))
    return series


def run_record(records: list[Any]) -> Any:
    """The run's own record (id, project, name). Raises AssertionError when the file has none."""
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs, "no run record in the W&B run file"
    return runs[0]
