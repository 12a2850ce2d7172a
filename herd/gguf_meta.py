"""A pure-Python reader for GGUF headers: metadata key/values and tensor infos, never tensor data.

The API process imports this instead of numpy or the ``gguf`` package so it stays small and starts
fast. The file is memory-mapped and only the header pages are touched; long arrays (the tokenizer's
262k strings) are skipped without building Python objects unless ``full_arrays`` is asked for.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

GGUF_MAGIC = b"GGUF"
# Arrays longer than this come back as None unless full_arrays=True, like Ollama's /api/show does for
# the tokenizer arrays when "verbose" is not set.
MAX_ARRAY_ITEMS = 64

# GGUF value type ids (gguf.GGUFValueType).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12

# Fixed-size scalar types: struct format char (little-endian is applied by the caller) and byte size.
_SCALARS: dict[int, tuple[str, int]] = {
    _UINT8: ("B", 1),
    _INT8: ("b", 1),
    _UINT16: ("H", 2),
    _INT16: ("h", 2),
    _UINT32: ("I", 4),
    _INT32: ("i", 4),
    _FLOAT32: ("f", 4),
    _BOOL: ("?", 1),
    _UINT64: ("Q", 8),
    _INT64: ("q", 8),
    _FLOAT64: ("d", 8),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# llama.cpp's LLAMA_FTYPE values with the names Ollama prints (fs/ggml FileType.String); ids that
# llama.cpp retired keep the name they had so old files still read sensibly.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    33: "Q4_0_4_4",
    34: "Q4_0_4_8",
    35: "Q4_0_8_8",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
}


class GGUFError(ValueError):
    """The file is not a readable GGUF (bad magic, unsupported version, truncated or corrupt header)."""


@dataclass
class GGUFInfo:
    """What the header of a GGUF file says about the model."""

    metadata: dict[str, Any]
    tensor_count: int
    parameter_count: int
    architecture: str
    file_type: str
    version: int = 3
    # Byte offset of the end of the tensor-info block (before alignment padding); for diagnostics.
    header_size: int = field(default=0, repr=False)

    def context_length(self) -> int | None:
        """The trained context length, ``<arch>.context_length``, if the file declares one."""
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def chat_template(self) -> str | None:
        """The Jinja chat template embedded by the converter (``tokenizer.chat_template``)."""
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None


class _Reader:
    """Cursor over the mapped file; every read is bounds-checked so corrupt lengths fail cleanly."""

    def __init__(self, buf: mmap.mmap | bytes, full_arrays: bool) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.full_arrays = full_arrays

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"truncated GGUF file: {what} at offset {self.pos} needs {n} bytes")

    def u32(self, what: str) -> int:
        self._need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, what: str) -> int:
        self._need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self, what: str) -> str:
        n = self.u64(what)
        self._need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        # Some vocabularies hold byte tokens that are not valid UTF-8; replacing keeps them JSON-safe.
        return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.u64(what)
        self._need(n, what)
        self.pos += n

    def value(self, vtype: int, what: str) -> Any:
        scalar = _SCALARS.get(vtype)
        if scalar is not None:
            fmt, n = scalar
            self._need(n, what)
            (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
            self.pos += n
            return v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what)
        raise GGUFError(f"corrupt GGUF file: unknown value type {vtype} for {what}")

    def array(self, what: str) -> list[Any] | None:
        etype = self.u32(what)
        count = self.u64(what)
        if not self.full_arrays and count > MAX_ARRAY_ITEMS:
            self.skip_array_items(etype, count, what)
            return None
        scalar = _SCALARS.get(etype)
        if scalar is not None:
            # One unpack for the whole run is far faster than a Python loop for long numeric arrays.
            fmt, n = scalar
            self._need(n * count, what)
            items = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos))
            self.pos += n * count
            return items
        if etype == _STRING:
            return [self.string(what) for _ in range(count)]
        if etype == _ARRAY:
            return [self.array(what) for _ in range(count)]
        raise GGUFError(f"corrupt GGUF file: unknown array item type {etype} for {what}")

    def skip_array_items(self, etype: int, count: int, what: str) -> None:
        scalar = _SCALARS.get(etype)
        if scalar is not None:
            self._need(scalar[1] * count, what)
            self.pos += scalar[1] * count
        elif etype == _STRING:
            # Strings are length-prefixed, so each must be visited; this loop is the hot path for the
            # 262k-entry vocabularies and avoids slicing or decoding anything.
            buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
            for _ in range(count):
                if pos + 8 > size:
                    self.pos = pos
                    self._need(8, what)
                pos += 8 + unpack(buf, pos)[0]
            self.pos = pos
            if pos > size:
                raise GGUFError(f"truncated GGUF file: {what} runs past the end of the file")
        elif etype == _ARRAY:
            for _ in range(count):
                inner_type = self.u32(what)
                inner_count = self.u64(what)
                self.skip_array_items(inner_type, inner_count, what)
        else:
            raise GGUFError(f"corrupt GGUF file: unknown array item type {etype} for {what}")


def _parse(buf: mmap.mmap | bytes, full_arrays: bool) -> GGUFInfo:
    """Parse the header held in ``buf``."""
    r = _Reader(buf, full_arrays)
    r._need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    r.pos = 4
    version = r.u32("version")
    if version not in (2, 3):
        # A big-endian file reads its small version number byte-swapped.
        if version & 0xFFFF == 0 and (version >> 24) in (2, 3):
            raise GGUFError("big-endian GGUF files are not supported")
        raise GGUFError(f"unsupported GGUF version {version} (only 2 and 3 are supported)")
    tensor_count = r.u64("tensor count")
    kv_count = r.u64("metadata count")

    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = r.string(f"key #{i}")
        vtype = r.u32(f"type of {key!r}")
        metadata[key] = r.value(vtype, repr(key))

    parameter_count = 0
    for i in range(tensor_count):
        r.skip_string(f"name of tensor #{i}")
        n_dims = r.u32(f"dims of tensor #{i}")
        if n_dims > 8:
            # ggml tensors have at most 4 dims; a huge count means the header is garbage.
            raise GGUFError(f"corrupt GGUF file: tensor #{i} claims {n_dims} dimensions")
        r._need(8 * n_dims + 12, f"tensor #{i}")
        elements = 1
        for dim in struct.unpack_from(f"<{n_dims}Q", buf, r.pos):
            elements *= dim
        r.pos += 8 * n_dims + 12  # dims, then ggml type (u32) and data offset (u64)
        parameter_count += elements

    architecture = metadata.get("general.architecture")
    ftype = metadata.get("general.file_type")
    file_type = "unknown"
    if isinstance(ftype, int) and not isinstance(ftype, bool):
        file_type = FILE_TYPES.get(ftype, "unknown")
    return GGUFInfo(
        metadata=metadata,
        tensor_count=tensor_count,
        parameter_count=parameter_count,
        architecture=architecture if isinstance(architecture, str) else "",
        file_type=file_type,
        version=version,
        header_size=r.pos,
    )


def read_gguf_info(path: str | os.PathLike[str], full_arrays: bool = False) -> GGUFInfo:
    """Read the metadata and tensor infos of the GGUF file at ``path``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4:
            raise GGUFError(f"not a GGUF file: {os.fspath(path)!s} is only {size} bytes")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse(mm, full_arrays)
            except GGUFError as exc:
                raise GGUFError(f"{os.fspath(path)!s}: {exc}") from None
            except (struct.error, OverflowError, MemoryError, RecursionError) as exc:
                raise GGUFError(f"{os.fspath(path)!s}: corrupt GGUF header ({exc})") from None


def format_parameter_size(n: int) -> str:
    """Format a parameter count like Ollama's format.HumanNumber: 268098176 -> "268.10M"."""
    if n >= 1_000_000_000:
        v = n / 1_000_000_000
        return f"{v:.0f}B" if v.is_integer() else f"{v:.1f}B"
    if n >= 1_000_000:
        v = n / 1_000_000
        return f"{v:.0f}M" if v.is_integer() else f"{v:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)
