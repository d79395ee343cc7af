"""A minimal PNG writer for the tests (zlib and struct, no Pillow): 8-bit grey, grey+alpha,
RGB or RGBA, every row with one of PNG's five filters."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR = {1: 0, 2: 4, 3: 2, 4: 6}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
        out[i] = (x - predictor) & 0xFF
    return bytes(out)


def write_png(pixels: np.ndarray[Any, Any], filters: tuple[int, ...] = (0,)) -> bytes:
    """`pixels` (uint8, height × width × channels) as a PNG; row y uses filter
    `filters[y % len(filters)]`."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    stride = width * channels
    raw = bytearray()
    prev = bytes(stride)
    for y in range(height):
        row = pixels[y].tobytes()
        kind = filters[y % len(filters)]
        raw.append(kind)
        raw += _filter(kind, row, prev, channels)
        prev = row
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR[channels], 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(raw)))
        + _chunk(b"IEND", b"")
    )
