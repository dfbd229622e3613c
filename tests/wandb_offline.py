"""Reads an offline W&B run folder back (test-only): what the run logged, as W&B will see it on `wandb sync`.

W&B's `use_artifact` does not work offline and `disabled` mode proves nothing, so the tests read the
run file itself: LevelDB-log framing of `wandb_internal_pb2.Record` protos.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK, _HDR = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _iter_records(path: str) -> Iterator[Any]:
    """Records of a `run-*.wandb` file: LevelDB-log framing of wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HDR])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"not a wandb run file: {path}")
    pos, buf = _HDR, b""
    while pos + _HDR <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HDR:
            pos += left
            continue
        crc, length, rtype = struct.unpack("<IHB", data[pos : pos + _HDR])
        if rtype == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + _HDR : pos + _HDR + length]
        if len(chunk) < length:
            break  # truncated tail of a crashed writer
        if zlib.crc32(chunk, zlib.crc32(bytes([rtype]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad checksum at offset {pos} in {path}")
        pos += _HDR + length
        buf = chunk if rtype in (_FULL, _FIRST) else buf + chunk
        if rtype in (_FIRST, _MIDDLE):
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        buf = b""
        yield record


def read_offline_run(run_dir: str | Path, wait: float = 30.0) -> dict[str, Any]:
    """What an offline run folder holds: run info, config, history, summary, the artifacts it
    logged (`artifacts`) and the ones it declared as inputs (`inputs`).

    wandb-core writes the file from its own process and may still be flushing it when `finish()`
    has returned (seen on a loaded 2-core machine: a file without its run record yet, and one with
    its run record but not yet the table artifact logged before `finish()`), so the read is
    repeated, for up to `wait` seconds, until the file holds the exit record a finished run ends with."""
    deadline = time.monotonic() + wait
    while True:
        out = _read_offline_run(run_dir)
        if out.pop("exited", False) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    (path,) = glob.glob(os.path.join(str(run_dir), "run-*.wandb"))
    out: dict[str, Any] = {"artifacts": [], "inputs": [], "history": [], "config": {}, "summary": {}}

    def key(item) -> str:
        return "/".join(item.nested_key) if item.nested_key else item.key

    for record in _iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "artifact":
            a = record.artifact
            # use_after_commit: declared as the run's input (`use_artifact`), not its output
            out["inputs" if a.use_after_commit else "artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": sorted(a.aliases),
                    "digest": a.digest,
                    "metadata": json.loads(a.metadata) if a.metadata else {},
                    # local_path: the staged copy an offline run uploads on `wandb sync`
                    "files": {
                        e.path: {"digest": e.digest, "size": e.size, "local_path": e.local_path}
                        for e in a.manifest.contents
                    },
                    "references": {e.path: e.ref for e in a.manifest.contents if e.ref},
                }
            )
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in record.history.item if i.value_json})
        elif kind == "run":
            out.update(
                run_id=record.run.run_id,
                project=record.run.project,
                job_type=record.run.job_type,
                group=record.run.run_group,
                name=record.run.display_name,
            )
            out["config"].update({key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            out["exited"] = True
    out["config"].pop("_wandb", None)
    return out
