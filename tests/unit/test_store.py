"""The model store against a directory laid out byte-for-byte the way Ollama writes it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter

from herd.names import ModelName
from herd.store import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MEDIA_LICENSE,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    ModelNotFound,
    ModelStore,
    StoreError,
)
from herd.store.temps import UNLOCKED_TEMP_AGE_S, quantize_output, remove_leftovers

GEMMA_TEMPLATE = (
    "{{- range $i, $_ := .Messages }}<start_of_turn>{{ .Role }}\n{{ .Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"
)
PARAMS = {"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95}


def _gguf_bytes(tmp: Path, arch: str = "gemma3", ftype: int = 15, width: int = 8) -> bytes:
    path = tmp / f"{arch}-{ftype}-{width}.gguf"
    w = GGUFWriter(path, arch)
    w.add_context_length(2048)
    w.add_file_type(ftype)
    w.add_tensor("tok_embd.weight", np.ones((width, 4), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones((4,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


class OllamaLayout:
    """Writes a store by hand exactly as Ollama lays it out, independent of the code under test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes) -> dict[str, Any]:
        hexd = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / f"sha256-{hexd}").write_bytes(data)
        return {"digest": f"sha256:{hexd}", "size": len(data)}

    def manifest(self, parts: tuple[str, str, str, str], body: bytes) -> Path:
        path = self.root.joinpath("manifests", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return path

    def model(
        self,
        parts: tuple[str, str, str, str],
        gguf: bytes,
        *,
        config: dict[str, Any] | None = None,
        template: str | None = GEMMA_TEMPLATE,
        system: str | None = "You are a helpful assistant.",
        params: dict[str, Any] | None = PARAMS,
        license_text: str | None = "Gemma Terms of Use",
    ) -> Path:
        layers = [{"mediaType": MEDIA_MODEL, **self.blob(gguf)}]
        if template is not None:
            layers.append({"mediaType": MEDIA_TEMPLATE, **self.blob(template.encode())})
        if system is not None:
            layers.append({"mediaType": MEDIA_SYSTEM, **self.blob(system.encode())})
        if license_text is not None:
            layers.append({"mediaType": MEDIA_LICENSE, **self.blob(license_text.encode())})
        if params is not None:
            layers.append({"mediaType": MEDIA_PARAMS, **self.blob(json.dumps(params).encode())})
        if config is None:
            config = {
                "model_format": "gguf",
                "model_family": "gemma3",
                "model_families": ["gemma3"],
                "model_type": "268.10M",
                "file_type": "Q4_K_M",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [la["digest"] for la in layers]},
            }
        cfg = self.blob(json.dumps(config, separators=(",", ":")).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, **cfg},
            "layers": layers,
        }
        return self.manifest(parts, json.dumps(manifest, separators=(",", ":")).encode())


GEMMA = ("registry.ollama.ai", "library", "gemma3", "270m")


@pytest.fixture
def gguf_data(tmp_path: Path) -> bytes:
    return _gguf_bytes(tmp_path)


@pytest.fixture
def layout(tmp_path: Path) -> OllamaLayout:
    return OllamaLayout(tmp_path / "models")


@pytest.fixture
def store(layout: OllamaLayout) -> ModelStore:
    return ModelStore(layout.root)


def _blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").iterdir()}


def _no_partials(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if "partial" in p.name]
    assert leftovers == []


# --- reading an Ollama store ------------------------------------------------------------------------


def test_get_reads_every_layer(store: ModelStore, layout: OllamaLayout, gguf_data: bytes) -> None:
    path = layout.model(GEMMA, gguf_data)
    m = store.get(ModelName.parse("gemma3:270m"))
    assert m.name == ModelName.parse("gemma3:270m")
    assert m.name.display == "gemma3:270m"
    assert m.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.model_path == layout.root / "blobs" / f"sha256-{hashlib.sha256(gguf_data).hexdigest()}"
    assert m.model_path.read_bytes() == gguf_data
    assert m.template == GEMMA_TEMPLATE
    assert m.system == "You are a helpful assistant."
    assert m.license == ["Gemma Terms of Use"]
    assert m.params == PARAMS
    assert m.messages == [] and m.adapters == [] and m.projectors == []
    assert m.config["model_family"] == "gemma3"
    assert m.manifest_path == path
    # Ollama's Manifest.Size(): every layer plus the config blob.
    doc = json.loads(path.read_bytes())
    assert m.size == sum(la["size"] for la in doc["layers"]) + doc["config"]["size"]
    assert m.modified_at.tzinfo is not None
    assert m.modified_at == datetime.fromtimestamp(path.stat().st_mtime, tz=m.modified_at.tzinfo)
    assert m.layers[0][0] == MEDIA_MODEL


def test_details_from_config(store: ModelStore, layout: OllamaLayout, gguf_data: bytes) -> None:
    layout.model(GEMMA, gguf_data)
    assert store.get(ModelName.parse("gemma3:270m")).details() == {
        "parent_model": "",
        "format": "gguf",
        "family": "gemma3",
        "families": ["gemma3"],
        "parameter_size": "268.10M",
        "quantization_level": "Q4_K_M",
    }


def test_details_fall_back_to_gguf(store: ModelStore, layout: OllamaLayout, tmp_path: Path) -> None:
    data = _gguf_bytes(tmp_path, arch="llama", ftype=7, width=250_000)
    layout.model(GEMMA, data, config={"architecture": "amd64", "os": "linux"})
    d = store.get(ModelName.parse("gemma3:270m")).details()
    assert d["format"] == "gguf"
    assert d["family"] == "llama"
    assert d["families"] == ["llama"]
    assert d["parameter_size"] == "1.00M"  # 250000*4 + 4
    assert d["quantization_level"] == "Q8_0"


def test_missing_config_blob_gives_empty_config(
    store: ModelStore, layout: OllamaLayout, gguf_data: bytes
) -> None:
    layout.model(GEMMA, gguf_data)
    doc = json.loads(layout.root.joinpath("manifests", *GEMMA).read_bytes())
    store.blob_path(doc["config"]["digest"]).unlink()
    m = store.get(ModelName.parse("gemma3:270m"))
    assert m.config == {}
    assert m.details()["family"] == "gemma3"  # from the GGUF header


def test_list(store: ModelStore, layout: OllamaLayout, gguf_data: bytes, tmp_path: Path) -> None:
    old = layout.model(GEMMA, gguf_data)
    os.utime(old, (1_700_000_000, 1_700_000_000))
    layout.model(("registry.ollama.ai", "myuser", "foo", "latest"), gguf_data, template=None)
    layout.model(("hf.co", "user", "repo", "Q4_K_M"), _gguf_bytes(tmp_path, width=3), params=None)
    models = store.list()
    names = [m.name.display for m in models]
    assert sorted(names) == ["gemma3:270m", "hf.co/user/repo:Q4_K_M", "myuser/foo:latest"]
    assert names[-1] == "gemma3:270m"  # newest first, like /api/tags
    foo = next(m for m in models if m.name.model == "foo")
    assert foo.template is None
    repo = next(m for m in models if m.name.host == "hf.co")
    assert repo.params == {}


def test_list_empty_and_missing_root(tmp_path: Path) -> None:
    assert ModelStore(tmp_path / "nope").list() == []
    (tmp_path / "empty" / "manifests").mkdir(parents=True)
    assert ModelStore(tmp_path / "empty").list() == []


def test_lookup_is_case_insensitive(store: ModelStore, layout: OllamaLayout, gguf_data: bytes) -> None:
    layout.model(("registry.ollama.ai", "MyUser", "Foo", "Latest"), gguf_data)
    m = store.get(ModelName.parse("myuser/foo"))
    # The name keeps the casing found on disk, as Ollama shows it.
    assert m.name.display == "MyUser/Foo:Latest"
    assert store.get(ModelName.parse("MYUSER/FOO:LATEST")).digest == m.digest
    assert store.get(ModelName.parse("REGISTRY.OLLAMA.AI/myuser/foo")).digest == m.digest


def test_not_found(store: ModelStore, layout: OllamaLayout, gguf_data: bytes) -> None:
    layout.model(GEMMA, gguf_data)
    with pytest.raises(ModelNotFound) as info:
        store.get(ModelName.parse("gemma3:1b"), raw="Gemma3:1B")
    assert str(info.value) == "model 'Gemma3:1B' not found"
    assert info.value.name == "Gemma3:1B"
    with pytest.raises(ModelNotFound, match="model 'nothing:latest' not found"):
        store.get(ModelName.parse("nothing"))
    with pytest.raises(ModelNotFound):
        ModelStore(layout.root / "absent").get(ModelName.parse("gemma3"))


@pytest.mark.parametrize(
    "breakage", ["missing_blob", "bad_json", "short_blob", "no_model_layer", "bad_params"]
)
def test_broken_manifest_skipped_by_list_and_reported_by_get(
    store: ModelStore,
    layout: OllamaLayout,
    gguf_data: bytes,
    tmp_path: Path,
    breakage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    layout.model(GEMMA, gguf_data)
    bad_parts = ("registry.ollama.ai", "library", "broken", "latest")
    other = _gguf_bytes(tmp_path, width=5)
    path = layout.model(bad_parts, other)
    doc = json.loads(path.read_bytes())
    if breakage == "missing_blob":
        store.blob_path(doc["layers"][0]["digest"]).unlink()
    elif breakage == "bad_json":
        path.write_text("{not json")
    elif breakage == "short_blob":
        blob = store.blob_path(doc["layers"][0]["digest"])
        blob.write_bytes(blob.read_bytes()[:10])
    elif breakage == "no_model_layer":
        doc["layers"] = doc["layers"][1:]
        path.write_text(json.dumps(doc))
    elif breakage == "bad_params":
        params = next(la for la in doc["layers"] if la["mediaType"] == MEDIA_PARAMS)
        params.update(layout.blob(b"[1,2]"))  # valid JSON, but not the object Ollama writes
        path.write_text(json.dumps(doc))

    with caplog.at_level(logging.WARNING, logger="herd.store"):
        assert [m.name.model for m in store.list()] == ["gemma3"]
    assert any("broken" in r.getMessage() for r in caplog.records)
    # The manifest exists, so "not found" would mislead: get() reports the damage.
    with pytest.raises(StoreError):
        store.get(ModelName.parse("broken"))


def test_list_ignores_stray_files(store: ModelStore, layout: OllamaLayout, gguf_data: bytes) -> None:
    layout.model(GEMMA, gguf_data)
    layout.manifest(("registry.ollama.ai", "library", "gemma3", ".latest.partial-abc"), b"{")
    (layout.root / "manifests" / "registry.ollama.ai" / "stray-file").write_text("x")
    (layout.root / "manifests" / "registry.ollama.ai" / "library" / "gemma3" / "dir").mkdir()
    (layout.root / "blobs" / "sha256-deadbeef-partial").write_text("x")
    assert [m.name.display for m in store.list()] == ["gemma3:270m"]


# --- blob paths ------------------------------------------------------------------------------------


def test_blob_path_accepts_both_separators(store: ModelStore) -> None:
    hexd = "ab" * 32
    expected = store.root / "blobs" / f"sha256-{hexd}"
    assert store.blob_path(f"sha256:{hexd}") == expected
    assert store.blob_path(f"sha256-{hexd}") == expected
    assert store.blob_path(f"sha256:{hexd.upper()}") == expected


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "a" * 64,
        "sha256:../../etc/passwd",
        "sha256-" + "a" * 64 + "/../x",
        "sha256:" + "a" * 64 + "\n",
        "sha256:" + "a" * 64 + "\x00",
        "../sha256-" + "a" * 64,
        "sha256_" + "a" * 64,
    ],
)
def test_blob_path_rejects_bad_digests(store: ModelStore, digest: str) -> None:
    with pytest.raises(ValueError):
        store.blob_path(digest)


# --- writing ---------------------------------------------------------------------------------------


def test_write_blob_bytes_is_idempotent(store: ModelStore) -> None:
    digest, size = store.write_blob_bytes(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest() and size == 5
    assert store.blob_path(digest).read_bytes() == b"hello"
    assert store.write_blob_bytes(b"hello") == (digest, size)
    _no_partials(store.root)


@pytest.mark.parametrize("link", [True, False])
def test_write_blob_from_file(store: ModelStore, tmp_path: Path, link: bool) -> None:
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    digest, size = store.write_blob_from_file(src, link=link)
    blob = store.blob_path(digest)
    assert digest == "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    assert size == src.stat().st_size
    assert blob.read_bytes() == src.read_bytes()
    # tmp_path and the store share a filesystem, so link=True must hard-link rather than copy.
    assert os.path.samefile(blob, src) is link
    assert store.write_blob_from_file(src, link=link) == (digest, size)
    _no_partials(store.root)


def test_write_blob_falls_back_to_copy_when_link_fails(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"x" * 1000)

    def no_link(*_: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    digest, _ = store.write_blob_from_file(src)
    assert store.blob_path(digest).read_bytes() == b"x" * 1000
    assert not os.path.samefile(store.blob_path(digest), src)
    _no_partials(store.root)


def test_failed_copy_leaves_no_partial(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"y" * 5000)

    def boom(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_blob_from_file(src, link=False)
    _no_partials(store.root)
    assert not any(p.name.startswith("sha256-") for p in (store.root / "blobs").iterdir())


def test_write_manifest_refuses_missing_blobs(store: ModelStore) -> None:
    with pytest.raises(StoreError):
        store.write_manifest(ModelName.parse("x"), {}, [(MEDIA_MODEL, "sha256:" + "0" * 64, 10)])
    digest, size = store.write_blob_bytes(b"weights")
    with pytest.raises(StoreError):
        store.write_manifest(ModelName.parse("x"), {}, [(MEDIA_MODEL, digest, size + 1)])
    with pytest.raises(ValueError):
        store.write_manifest(ModelName.parse("x"), {}, [(MEDIA_TEMPLATE, digest, size)])
    assert not (store.root / "manifests" / "registry.ollama.ai" / "library" / "x").exists()
    _no_partials(store.root)


def test_write_manifest_format(store: ModelStore) -> None:
    digest, size = store.write_blob_bytes(b"GGUF-ish")
    m = store.write_manifest(
        ModelName.parse("ns/tiny:v1"), {"model_format": "gguf"}, [(MEDIA_MODEL, digest, size)]
    )
    path = store.root / "manifests" / "registry.ollama.ai" / "ns" / "tiny" / "v1"
    doc = json.loads(path.read_bytes())
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == MANIFEST_MEDIA_TYPE
    assert doc["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert doc["layers"] == [{"mediaType": MEDIA_MODEL, "digest": digest, "size": size}]
    config = json.loads(store.blob_path(doc["config"]["digest"]).read_bytes())
    assert config["rootfs"] == {"type": "layers", "diff_ids": [digest]}
    assert m.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.config == config
    _no_partials(store.root)


def test_import_gguf_round_trip(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "model.gguf"
    src.write_bytes(_gguf_bytes(tmp_path, arch="gemma3", ftype=15, width=1000))
    m = store.import_gguf(
        ModelName.parse("Mine/Model:Q4"),
        src,
        template=GEMMA_TEMPLATE,
        system="Be brief.",
        params={"temperature": 0.7, "stop": ["<end_of_turn>"]},
    )
    again = store.get(ModelName.parse("mine/model:q4"))
    assert again.digest == m.digest
    assert again.name.display == "Mine/Model:Q4"
    assert again.model_path.read_bytes() == src.read_bytes()
    assert again.template == GEMMA_TEMPLATE
    assert again.system == "Be brief."
    assert again.params == {"temperature": 0.7, "stop": ["<end_of_turn>"]}
    assert again.details() == {
        "parent_model": "",
        "format": "gguf",
        "family": "gemma3",
        "families": ["gemma3"],
        "parameter_size": "4K",  # 1000*4 + 4
        "quantization_level": "Q4_K_M",
    }
    assert again.config["model_format"] == "gguf"
    assert again.config["os"] == "linux"
    assert again.config["rootfs"]["diff_ids"] == [d for _, d, _ in again.layers]
    assert [m.name.display for m in store.list()] == ["Mine/Model:Q4"]
    _no_partials(store.root)


def test_import_overwrites_existing_name_in_its_casing(store: ModelStore, tmp_path: Path) -> None:
    a = tmp_path / "a.gguf"
    a.write_bytes(_gguf_bytes(tmp_path, width=2))
    b = tmp_path / "b.gguf"
    b.write_bytes(_gguf_bytes(tmp_path, width=3))
    store.import_gguf(ModelName.parse("Foo"), a)
    m = store.import_gguf(ModelName.parse("foo"), b)
    assert m.name.display == "Foo:latest"
    assert [x.name.display for x in store.list()] == ["Foo:latest"]
    assert store.get(ModelName.parse("FOO")).model_path.read_bytes() == b.read_bytes()


def test_import_rewrites_a_blob_removed_before_its_manifest(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(_gguf_bytes(tmp_path, width=9))
    real = store.write_manifest
    calls = 0

    def racing_delete(name: ModelName, config: dict[str, Any], layers: list[tuple[str, str, int]]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # what a concurrent delete of a model sharing the weights would do
            store.blob_path(layers[0][1]).unlink()
        return real(name, config, layers)

    monkeypatch.setattr(store, "write_manifest", racing_delete)
    m = store.import_gguf(ModelName.parse("raced"), src, link=False)
    assert calls == 2
    assert m.model_path.read_bytes() == src.read_bytes()


def test_import_rejects_non_gguf(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "not.gguf"
    src.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(ValueError):
        store.import_gguf(ModelName.parse("x"), src)
    assert store.list() == []
    assert not (store.root / "blobs").exists() or _blob_files(store.root) == set()


# --- deleting --------------------------------------------------------------------------------------


def test_delete_keeps_shared_blobs(
    store: ModelStore, layout: OllamaLayout, gguf_data: bytes, tmp_path: Path
) -> None:
    layout.model(GEMMA, gguf_data)
    # Same weights and template, different system prompt: shares most blobs with gemma3:270m.
    layout.model(("registry.ollama.ai", "me", "gemma-pirate", "latest"), gguf_data, system="Arr.")
    pirate = store.get(ModelName.parse("me/gemma-pirate"))
    gemma = store.get(ModelName.parse("gemma3:270m"))
    pirate_only = {d for _, d, _ in pirate.layers} - {d for _, d, _ in gemma.layers}
    pirate_cfg = json.loads(pirate.manifest_path.read_bytes())["config"]["digest"]  # type: ignore[union-attr]
    assert pirate_only  # the system layer

    store.delete(ModelName.parse("ME/Gemma-Pirate"))
    with pytest.raises(ModelNotFound):
        store.get(ModelName.parse("me/gemma-pirate"))
    for d in pirate_only | {pirate_cfg}:
        assert not store.blob_path(d).exists()
    # Everything gemma3 needs is still there and it still loads.
    assert store.get(ModelName.parse("gemma3:270m")).digest == gemma.digest
    assert gemma.model_path.exists()
    # Empty manifest directories are pruned like Ollama's PruneDirectory.
    assert not (layout.root / "manifests" / "registry.ollama.ai" / "me").exists()

    store.delete(ModelName.parse("gemma3:270m"))
    assert store.list() == []
    assert _blob_files(layout.root) == set()
    assert (layout.root / "manifests").is_dir()


def test_delete_missing(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound):
        store.delete(ModelName.parse("nothing"))


def test_delete_keeps_blobs_when_another_manifest_is_unreadable(
    store: ModelStore, layout: OllamaLayout, gguf_data: bytes
) -> None:
    layout.model(GEMMA, gguf_data)
    layout.manifest(("registry.ollama.ai", "library", "garbled", "latest"), b"{oops")
    before = _blob_files(layout.root)
    store.delete(ModelName.parse("gemma3:270m"))
    assert _blob_files(layout.root) == before
    assert store.list() == []


def test_concurrent_imports_and_deletes_leave_a_consistent_store(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(_gguf_bytes(tmp_path, width=64))
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(5):
                name = ModelName.parse(f"m{i}")
                store.import_gguf(name, src, link=False)
                store.delete(name)
        except BaseException as exc:  # import_gguf rewrites blobs a concurrent delete removed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Whatever survived must be fully loadable.
    for m in store.list():
        assert m.model_path.exists()
    _no_partials(store.root)


# --- leftover temp files (removed at store-worker start) -------------------------------------------


def test_leftovers_go_while_pull_partials_and_a_running_quantize_stay(store: ModelStore) -> None:
    blobs = store.blobs_dir
    blobs.mkdir(parents=True, exist_ok=True)
    dead_quantize = blobs / "quantize-00000000000000aa.partial"
    dead_quantize.write_bytes(b"q" * 4096)
    hexd = "cd" * 32
    pull_partial, pull_state = blobs / f"sha256-{hexd}-partial", blobs / f"sha256-{hexd}-partial.parts"
    pull_partial.write_bytes(b"resume")
    pull_state.write_text("{}")
    old_temp, fresh_temp = (
        blobs / f"sha256-{hexd}-partial-{'e' * 16}",
        blobs / f"sha256-{hexd}-partial-{'f' * 16}",
    )
    old_temp.write_bytes(b"old")
    fresh_temp.write_bytes(b"fresh")
    hour_ago = time.time() - UNLOCKED_TEMP_AGE_S - 60
    os.utime(old_temp, (hour_ago, hour_ago))
    manifest_temp = (
        store.manifests_dir / "registry.ollama.ai" / "library" / "m" / f".latest.partial-{'a' * 16}"
    )
    manifest_temp.parent.mkdir(parents=True)
    manifest_temp.write_text("{}")
    os.utime(manifest_temp, (hour_ago, hour_ago))

    with quantize_output(store) as running:
        running.write_bytes(b"being written")  # the quantizer truncates and writes the locked inode
        removed = remove_leftovers(store)
        assert running.read_bytes() == b"being written"  # a running create's output is left alone
    assert not running.exists()  # and its block removes it
    assert sorted(removed) == sorted([dead_quantize, old_temp, manifest_temp])
    assert {p.name for p in blobs.iterdir()} == {pull_partial.name, pull_state.name, fresh_temp.name}
    assert remove_leftovers(ModelStore(store.root / "absent")) == []
