"""Reads the records of an offline W&B run file (<run>/run-<id>.wandb) for the tests.

The file is a 7-byte header (":W&B", magic, version) followed by a LevelDB-style log: 32 KiB
blocks of chunks, each with a 7-byte header (crc32, little-endian length, type: 1 full,
2 first, 3 middle, 4 last); a block's tail shorter than a header is padding. Each assembled
record is a wandb_internal_pb2.Record protobuf.
"""

import struct

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024


def records(path):
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # padding at the end of a block
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero-filled tail
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history(path) -> list[dict]:
    """Every logged history row as {key: json text}."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item})
    return rows
