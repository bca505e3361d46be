"""Reading a safetensors file's header, checked against the file's size: a truncated or corrupt download fails
here, naming the file, before any model load. Import-light (no torch): the inspector, the identity files and the
config checks all read headers through this module.
"""

import json
import math
import struct
from pathlib import Path

from magicme.errors import ConfigError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _corrupt(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: corrupt safetensors file ({what}); re-download it")


def _data_length(path: Path, header: dict) -> int:
    """Bytes of tensor data the header describes. Like safetensors itself, require every entry to be as long as its
    dtype and shape say and the entries to tile the data region in order, without overlaps or holes."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise _corrupt(path, f"tensor {name!r} lacks dtype, shape or data_offsets") from None
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise _corrupt(path, f"tensor {name!r} has shape {shape!r}")
        if dtype not in DTYPE_BYTES or not all(isinstance(x, int) for x in (begin, end)):
            raise _corrupt(path, f"tensor {name!r} has dtype {dtype!r}, offsets {entry['data_offsets']!r}")
        if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _corrupt(path, f"tensor {name!r} spans {end - begin} bytes, its shape {shape} needs "
                                 f"{math.prod(shape) * DTYPE_BYTES[dtype]}")
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _corrupt(path, f"tensor {name!r} starts at byte {begin}, expected {position}: overlapping or "
                                 f"out-of-order data offsets")
        position = end
    return position


def _read_header_bytes(path: Path) -> tuple[int, int, bytes]:
    """File size, declared header length and the header's bytes, reading nothing past the header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ConfigError(f"{path}: truncated safetensors file ({size} bytes, no header); re-download it")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise _corrupt(path, f"header length {length} is implausible")
        if length > size - 8:
            raise ConfigError(f"{path}: truncated safetensors file ({size:,} bytes, shorter than its header); "
                              f"re-download it")
        return size, length, f.read(length)


def safetensors_header(path: Path | str) -> dict:
    """The parsed JSON header of a safetensors file, checked against the file's size so that a truncated or corrupt
    download fails here, naming the file, instead of deep inside a model load."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        size, length, raw = _read_header_bytes(path)
    except OSError as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    try:
        header = json.loads(raw)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError both are ValueErrors
        raise _corrupt(path, f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    expected = 8 + length + _data_length(path, header)
    if size < expected:
        raise ConfigError(f"{path}: truncated safetensors file ({size:,} of {expected:,} bytes); re-download it")
    if size > expected:
        raise _corrupt(path, f"{size - expected:,} bytes after the last tensor")
    return header
