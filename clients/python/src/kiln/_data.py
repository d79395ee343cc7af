"""Decoding what workers store: `.npy`, safetensors and 8-bit PNG."""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import Any

import numpy as np

from ._errors import KilnError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"


def load_npy(what: str, data: bytes) -> np.ndarray[Any, Any]:
    if not data.startswith(NPY_MAGIC):
        raise KilnError(f"{what} is not a .npy file (it starts with {data[:8]!r})")
    array: np.ndarray[Any, Any] = np.load(io.BytesIO(data), allow_pickle=False)
    return array


def load_safetensors(what: str, data: bytes) -> dict[str, np.ndarray[Any, Any]]:
    try:
        from safetensors.numpy import load
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise KilnError(
            f"reading {what} needs the safetensors package: pip install safetensors"
        ) from e
    tensors: dict[str, np.ndarray[Any, Any]] = load(data)
    return tensors


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (an 8-byte length, then a JSON header)."""
    if len(data) < 8:
        return {}
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def decode_png(what: str, data: bytes) -> np.ndarray[Any, Any]:
    """A PNG as a float32 array shaped [channels, height, width] with values in [0, 1], the
    layout of kiln's image tensors (8- and 16-bit grey, grey+alpha, RGB and RGBA, not
    interlaced: what kiln writes). Uses Pillow when it is installed."""
    if not data.startswith(PNG_SIGNATURE):
        raise KilnError(f"{what} is not a PNG (it starts with {data[:8]!r})")
    try:
        from PIL import Image
    except ImportError:
        return _decode_png(what, data)
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("L", "LA", "RGB", "RGBA"):
            return _decode_png(what, data)
        pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)


_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _decode_png(what: str, data: bytes) -> np.ndarray[Any, Any]:
    pos = len(PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    idat = bytearray()
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise KilnError(f"{what}: a PNG without an IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if color not in _CHANNELS or depth not in (8, 16) or interlace != 0:
        raise KilnError(
            f"{what}: PNG colour type {color}, {depth}-bit, interlace {interlace} is not read "
            "without Pillow (pip install pillow); result.object_bytes() gives the file"
        )
    channels = _CHANNELS[color]
    bpp = channels * depth // 8
    stride = width * bpp
    raw = zlib.decompress(bytes(idat))
    if len(raw) != height * (stride + 1):
        raise KilnError(
            f"{what}: PNG data holds {len(raw)} bytes, expected {height * (stride + 1)}"
        )
    rows = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        start = y * (stride + 1)
        filter_type = raw[start]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=start + 1).astype(np.int32)
        if filter_type == 0:
            cur = line
        elif filter_type == 1:  # Sub: each byte adds the one a pixel to its left.
            cur = (np.cumsum(line.reshape(width, bpp), axis=0) % 256).reshape(stride)
        elif filter_type == 2:  # Up
            cur = (line + prev) % 256
        elif filter_type in (3, 4):  # Average, Paeth: each byte depends on the one just decoded.
            cur = _unfilter_sequential(filter_type, line.tolist(), prev.tolist(), bpp)
        else:
            raise KilnError(f"{what}: PNG row {y} has unknown filter type {filter_type}")
        rows[y] = cur
        prev = np.asarray(cur, dtype=np.int32)
    if depth == 16:
        values = rows.view(">u2").astype(np.float32) / np.float32(65535)
    else:
        values = rows.astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(values.reshape(height, width, channels).transpose(2, 0, 1))


def _unfilter_sequential(
    kind: int, line: list[int], prev: list[int], bpp: int
) -> np.ndarray[Any, Any]:
    out = [0] * len(line)
    for i, value in enumerate(line):
        left = out[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 3:
            out[i] = (value + (left + up) // 2) & 0xFF
        else:
            upper_left = prev[i - bpp] if i >= bpp else 0
            p = left + up - upper_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
            predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else upper_left)
            out[i] = (value + predictor) & 0xFF
    return np.asarray(out, dtype=np.int32)
