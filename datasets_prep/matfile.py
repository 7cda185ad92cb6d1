"""A small reader for MATLAB level-5 MAT-files (what the SVHN .mat files are), numeric arrays only.

Enough of the format to read SVHN without scipy at run time: the 128-byte header, top-level data
elements, miCOMPRESSED (zlib) elements, and miMATRIX elements holding numeric arrays. Large
arrays can be streamed along their last axis (SVHN's image axis) so that the 1.3 GB `extra` set
never has to sit in memory whole; compressed elements are inflated incrementally.

Layout reference: MathWorks, "MAT-File Format" (matfile_format.pdf), level 5.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from .errors import PrepError

MI_COMPRESSED = 15
MI_MATRIX = 14
MI_INT8 = 1
MI_INT32 = 5
MI_UINT32 = 6
# Storage types of numeric data elements.
MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
# Array classes (the type the array has in MATLAB; data may be stored in a narrower type).
MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
MX_COMPLEX_FLAG = 0x0800
_READ_CHUNK = 1 << 20


class _RawStream:
    """A window of the file, read front to back."""

    def __init__(self, f: BinaryIO, offset: int, length: int):
        f.seek(offset)
        self._f = f
        self._left = length

    def read(self, n: int) -> bytes:
        data = self._f.read(min(n, self._left))
        self._left -= len(data)
        return data


class _InflateStream:
    """The inflated contents of a miCOMPRESSED element, produced as they are read."""

    def __init__(self, f: BinaryIO, offset: int, length: int, where: str):
        f.seek(offset)
        self._f = f
        self._left = length
        self._where = where
        self._inflater = zlib.decompressobj()
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._inflater.eof:
            if self._inflater.unconsumed_tail:
                data = self._inflater.unconsumed_tail
            else:
                data = self._f.read(min(_READ_CHUNK, self._left))
                self._left -= len(data)
                if not data:
                    break
            try:
                # max_length bounds the output of one step (zeros inflate a thousandfold).
                self._buf += self._inflater.decompress(data, max(n - len(self._buf), _READ_CHUNK))
            except zlib.error as e:
                raise PrepError(f"{self._where}: corrupt compressed data ({e})") from None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


@dataclass(frozen=True)
class MatVariable:
    """One numeric array in the file (header parsed; data not yet read)."""

    file: "MatFile"
    name: str
    mx_class: int
    dims: tuple[int, ...]
    stored_dtype: np.dtype  # how the elements are stored in the file
    element_offset: int  # top-level element position in the file
    element_length: int
    compressed: bool
    header_bytes: int  # bytes of the (inflated) element before the real-part data
    inline_data: bytes | None  # data of a "small data element" (<= 4 bytes), stored in its tag

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(MX_DTYPES[self.mx_class])

    @property
    def size(self) -> int:
        return math.prod(self.dims)

    def read(self) -> np.ndarray:
        """The whole array, shaped `dims` (column-major, as MATLAB stores it), in its class dtype."""
        chunks = list(self.iter_last_axis(max(1, self.dims[-1] if self.dims else 1)))
        if not chunks:
            return np.empty(self.dims, dtype=self.dtype)
        flat = np.concatenate([c.reshape(-1) for c in chunks])
        return flat.reshape(tuple(reversed(self.dims))).transpose()

    def iter_last_axis(self, count: int) -> Iterator[np.ndarray]:
        """Yield blocks of up to `count` entries of the last axis, each shaped (k, *reversed(dims[:-1])).

        Column-major storage makes the last axis the slowest-varying one, so each entry is one
        contiguous run of bytes; a block is returned in C order with the other axes reversed
        (for SVHN's X of dims (32, 32, 3, N): (k, 3, 32, 32) = (k, channel, column, row)).
        """
        inner = tuple(reversed(self.dims[:-1]))
        per_entry = math.prod(inner) * self.stored_dtype.itemsize
        n = self.dims[-1] if self.dims else 0
        if self.inline_data is not None:
            yield np.frombuffer(self.inline_data, self.stored_dtype)[: self.size].astype(self.dtype).reshape(n, *inner)
            return
        stream = self.file._element_stream(self)
        _read_exact(stream, self.header_bytes, self)
        done = 0
        while done < n:
            k = min(count, n - done)
            raw = _read_exact(stream, k * per_entry, self)
            yield np.frombuffer(raw, self.stored_dtype).astype(self.dtype, copy=False).reshape(k, *inner)
            done += k


def _read_exact(stream, n: int, var: MatVariable) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise PrepError(f"{var.file.path}: variable {var.name} is truncated")
    return data


class MatFile:
    """Index of the numeric variables of a level-5 MAT-file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.variables: dict[str, MatVariable] = {}
        self._skipped: dict[str, str] = {}
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise PrepError(f"{self.path}: cannot open ({e.strerror or e})") from None
        try:
            self._index()
        except BaseException:
            self._f.close()
            raise

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "MatFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, name: str) -> MatVariable:
        if name in self.variables:
            return self.variables[name]
        if name in self._skipped:
            raise PrepError(f"{self.path}: variable {name} is {self._skipped[name]}, not a numeric array")
        raise PrepError(f"{self.path}: no variable {name!r} (has: {', '.join(self.variables) or 'none'})")

    def _index(self) -> None:
        header = self._f.read(128)
        if len(header) < 128:
            raise PrepError(f"{self.path}: not a MAT-file (too short)")
        if header.startswith(b"MATLAB 7.3"):
            raise PrepError(
                f"{self.path}: MAT 7.3 (HDF5) files are not supported; save with -v7 "
                "(the official SVHN files are level 5)"
            )
        if header[126:128] == b"IM":
            self._endian = "<"
        elif header[126:128] == b"MI":
            self._endian = ">"
        else:
            raise PrepError(f"{self.path}: not a level-5 MAT-file (bad endian indicator)")
        file_size = self.path.stat().st_size
        pos = 128
        while pos < file_size:
            self._f.seek(pos)
            tag = self._f.read(8)
            if len(tag) < 8:
                raise PrepError(f"{self.path}: truncated at byte {pos}")
            mi_type, nbytes = struct.unpack(self._endian + "II", tag)
            data_start = pos + 8
            if data_start + nbytes > file_size:
                raise PrepError(
                    f"{self.path}: truncated (an element at byte {pos} needs {nbytes} bytes, the file ends first)"
                )
            if mi_type in (MI_MATRIX, MI_COMPRESSED) and nbytes > 0:
                self._index_matrix(data_start, nbytes, mi_type == MI_COMPRESSED)
            # Compressed elements are not padded; others are padded to 8 bytes.
            pos = data_start + (nbytes if mi_type == MI_COMPRESSED else _pad8(nbytes))

    def _element_stream(self, var: MatVariable):
        if var.compressed:
            return _InflateStream(self._f, var.element_offset, var.element_length, f"{self.path}: variable {var.name}")
        return _RawStream(self._f, var.element_offset, var.element_length)

    def _index_matrix(self, offset: int, length: int, compressed: bool) -> None:
        if compressed:
            stream = _InflateStream(self._f, offset, length, f"{self.path}: element at byte {offset - 8}")
        else:
            stream = _RawStream(self._f, offset, length)
        reader = _TagReader(stream, self._endian, self.path)
        if compressed:
            mi_type, _, _ = reader.tag()
            if mi_type != MI_MATRIX:
                return  # a compressed element that holds something other than an array
        mi_type, flags_data, _ = reader.tag(read_data=True)
        if mi_type != MI_UINT32 or len(flags_data) < 8:
            raise PrepError(f"{self.path}: malformed array flags at byte {offset}")
        flags = struct.unpack(self._endian + "I", flags_data[:4])[0]
        mx_class = flags & 0xFF
        _, dims_data, _ = reader.tag(read_data=True)
        dims = tuple(struct.unpack(self._endian + f"{len(dims_data) // 4}i", dims_data))
        _, name_data, _ = reader.tag(read_data=True)
        name = name_data.decode("ascii", "replace")
        if mx_class not in MX_DTYPES:
            self._skipped[name] = f"MATLAB class {mx_class}"
            return
        if flags & MX_COMPLEX_FLAG:
            self._skipped[name] = "complex"
            return
        data_type, inline, data_len = reader.tag(read_data=False)
        if data_type not in MI_DTYPES:
            raise PrepError(f"{self.path}: variable {name}: unsupported storage type {data_type}")
        stored = np.dtype(self._endian + MI_DTYPES[data_type])
        expected = math.prod(dims) * stored.itemsize
        if data_len != expected:
            raise PrepError(f"{self.path}: variable {name}: {data_len} data bytes for dims {dims}, expected {expected}")
        # Everything read so far precedes the data (for a compressed element, that includes the
        # inflated miMATRIX tag), so a fresh stream skips `consumed` bytes to reach it.
        self.variables[name] = MatVariable(
            self,
            name,
            mx_class,
            dims,
            stored,
            offset,
            length,
            compressed,
            reader.consumed,
            inline,
        )


class _TagReader:
    """Reads data-element tags (and small data) from a stream, counting bytes consumed."""

    def __init__(self, stream, endian: str, path: Path):
        self._stream = stream
        self._endian = endian
        self._path = path
        self.consumed = 0

    def _read(self, n: int) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise PrepError(f"{self._path}: truncated array header")
        self.consumed += n
        return data

    def tag(self, read_data: bool = False) -> tuple[int, bytes | None, int]:
        """(type, data, nbytes). Small elements carry their data in the tag; `data` is then set.

        With read_data the element's data (padded to 8 bytes) is consumed and returned too.
        """
        raw = self._read(8)
        first, second = struct.unpack(self._endian + "II", raw)
        if first >> 16:  # small data element: type and size packed in 4 bytes, data in the next 4
            mi_type, nbytes = first & 0xFFFF, first >> 16
            data = raw[4 : 4 + nbytes]
            return mi_type, data, nbytes
        if read_data:
            data = self._read(_pad8(second))[:second]
            return first, data, second
        return first, None, second


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8
