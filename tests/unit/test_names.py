"""Ollama model name parsing, validation and display forms."""

from __future__ import annotations

import pytest

from herd.names import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG, InvalidModelName, ModelName

VALID = [
    # raw, (host, namespace, model, tag), display, canonical
    ("gemma3", (DEFAULT_HOST, DEFAULT_NAMESPACE, "gemma3", DEFAULT_TAG), "gemma3:latest"),
    ("gemma3:270m", (DEFAULT_HOST, DEFAULT_NAMESPACE, "gemma3", "270m"), "gemma3:270m"),
    ("library/gemma3:270m", (DEFAULT_HOST, DEFAULT_NAMESPACE, "gemma3", "270m"), "gemma3:270m"),
    ("myuser/foo", (DEFAULT_HOST, "myuser", "foo", "latest"), "myuser/foo:latest"),
    (
        "registry.ollama.ai/library/gemma3:270m",
        (DEFAULT_HOST, DEFAULT_NAMESPACE, "gemma3", "270m"),
        "gemma3:270m",
    ),
    ("hf.co/user/repo:Q4_K_M", ("hf.co", "user", "repo", "Q4_K_M"), "hf.co/user/repo:Q4_K_M"),
    ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t"), "localhost:5000/ns/m:t"),
    ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest"), "localhost:5000/ns/m:latest"),
    ("https://example.com/ns/m:t", ("example.com", "ns", "m", "t"), "example.com/ns/m:t"),
    (
        "llama3.2:3b-instruct-q4_K_M",
        (DEFAULT_HOST, DEFAULT_NAMESPACE, "llama3.2", "3b-instruct-q4_K_M"),
        None,
    ),
    ("Mistral:Latest", (DEFAULT_HOST, DEFAULT_NAMESPACE, "Mistral", "Latest"), "Mistral:Latest"),
    ("_private/model_x:_t", (DEFAULT_HOST, "_private", "model_x", "_t"), "_private/model_x:_t"),
    ("a", (DEFAULT_HOST, DEFAULT_NAMESPACE, "a", DEFAULT_TAG), "a:latest"),
    ("a..b", (DEFAULT_HOST, DEFAULT_NAMESPACE, "a..b", DEFAULT_TAG), "a..b:latest"),
    ("m" * 80 + ":" + "t" * 80, (DEFAULT_HOST, DEFAULT_NAMESPACE, "m" * 80, "t" * 80), None),
]

INVALID = [
    "",
    ".",
    "..",
    "../../etc/passwd",
    "../x",
    "ns/..",
    "./model",
    "a/b/c/d/e",
    "a/b/c/d",
    "/model",
    "ns/",
    "host//model",
    "//ns/model",
    "model:",
    ":tag",
    "model::tag",
    "model:tag/x",
    "model:.hidden",
    "model:../x",
    "-model",
    ".model",
    "ns.x/model",  # namespaces may not contain dots
    "model\x00",
    "mo\x00del:tag",
    "model name",
    " model",
    "model\n",
    "model\t:tag",
    "model\x7f",
    "mödel",
    "model\\..\\x",
    "C:\\model",
    "a" * 500,
    "m" * 81,
    "model:" + "t" * 81,
    "h" * 351 + "/ns/model",
    "model@sha256:" + "0" * 64,
    "@sha256-" + "0" * 64,
    "ns/model:tag@sha256:abc",
    "model+Q4_0",
    "host:5000/ns/",
    "https:///ns/model",
]


@pytest.mark.parametrize(("raw", "parts", "display"), VALID)
def test_parse_valid(raw: str, parts: tuple[str, str, str, str], display: str | None) -> None:
    name = ModelName.parse(raw)
    assert name.manifest_parts() == parts
    assert (name.host, name.namespace, name.model, name.tag) == parts
    assert name.canonical == f"{parts[0]}/{parts[1]}/{parts[2]}:{parts[3]}"
    if display is not None:
        assert name.display == display
        assert str(name) == display
    # The display form must parse back to the same name.
    assert ModelName.parse(name.display) == name
    assert ModelName.parse(name.canonical) == name


@pytest.mark.parametrize("raw", INVALID)
def test_parse_invalid(raw: str) -> None:
    with pytest.raises(InvalidModelName) as info:
        ModelName.parse(raw)
    assert str(info.value) == "invalid model name"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "parts",
    [
        ("..", "library", "m", "latest"),
        ("registry.ollama.ai", "..", "m", "latest"),
        ("registry.ollama.ai", "library", "..", "latest"),
        ("registry.ollama.ai", "library", "m", ".."),
        ("registry.ollama.ai", "library", "m", ".latest.partial-abc"),
        ("registry.ollama.ai", "lib/rary", "m", "latest"),
        ("registry.ollama.ai", "library", "m", ""),
    ],
)
def test_constructor_rejects_unsafe_parts(parts: tuple[str, str, str, str]) -> None:
    with pytest.raises(InvalidModelName):
        ModelName(*parts)
    with pytest.raises(InvalidModelName):
        ModelName.from_parts(*parts)


def test_no_part_can_escape_a_directory() -> None:
    for raw, _, _ in VALID:
        for part in ModelName.parse(raw).manifest_parts():
            assert part not in ("", ".", "..")
            assert "/" not in part and "\\" not in part and "\x00" not in part
            assert not part.startswith(".")


def test_display_hides_only_default_parts() -> None:
    assert ModelName.parse("registry.ollama.ai/myuser/foo").display == "myuser/foo:latest"
    assert ModelName.parse("example.com/library/foo").display == "example.com/library/foo:latest"
    # Ollama compares the defaults case-insensitively when shortening.
    assert ModelName.parse("Registry.Ollama.AI/Library/foo:x").display == "foo:x"


def test_case_insensitive_comparison() -> None:
    a = ModelName.parse("Gemma3:270M")
    b = ModelName.parse("gemma3:270m")
    assert a != b  # the dataclass keeps the case as typed
    assert a.same(b)
    assert a.key == b.key
    assert not a.same(ModelName.parse("gemma3:1b"))
    assert {a.key: 1}[b.key] == 1


def test_frozen() -> None:
    name = ModelName.parse("gemma3")
    with pytest.raises(AttributeError):
        name.model = "other"  # type: ignore[misc]
