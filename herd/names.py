"""Ollama model names: parsing, validation and the display forms Ollama uses.

Mirrors ``types/model/name.go`` in ollama/ollama. A name has four parts, ``host/namespace/model:tag``;
missing ones are filled with Ollama's defaults. Each part is validated against Ollama's character rules,
which also makes every part a safe single path component: no part can be empty, ``.`` or ``..``, or hold
``/``, ``\\``, NUL, whitespace or anything outside ASCII letters, digits and ``_ . - :``.

Ollama compares names case-insensitively (``Name.EqualFold``) while keeping the case it was given on
disk; :meth:`ModelName.same` and :attr:`ModelName.key` give that comparison, and the store uses them
for lookups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's isValidPart: the first byte is an ASCII letter, digit or "_"; later bytes may also be "-",
# "." (not in a namespace) and ":" (host only, for a port). Lengths are Ollama's isValidLen bounds.
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")

# Far above any valid name (350 + 3 * 80 + separators); stops pathological input before any work.
_MAX_RAW_LEN = 1024


class InvalidModelName(ValueError):
    """A string that is not a valid Ollama model name."""

    def __init__(self, raw: str | None = None) -> None:
        # The message is exactly Ollama's ErrInvalidName text, which clients may match on.
        super().__init__("invalid model name")
        self.raw = raw


def _cut_last(s: str, sep: str) -> tuple[str, str, bool]:
    """Split at the last ``sep`` like Ollama's cutLast."""
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i], s[i + len(sep) :], True


@dataclass(frozen=True)
class ModelName:
    """A fully qualified Ollama model name; build it with :meth:`parse`."""

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        """Reject parts that Ollama would not accept, so no instance can name a path outside the store."""
        if not (
            _HOST_RE.fullmatch(self.host)
            and _NAMESPACE_RE.fullmatch(self.namespace)
            and _MODEL_RE.fullmatch(self.model)
            and _TAG_RE.fullmatch(self.tag)
        ):
            raise InvalidModelName(f"{self.host}/{self.namespace}/{self.model}:{self.tag}")

    @classmethod
    def parse(cls, raw: str) -> ModelName:
        """Parse ``[scheme://][host/][namespace/]model[:tag]`` and fill in Ollama's defaults."""
        if not isinstance(raw, str) or not raw or len(raw) > _MAX_RAW_LEN:
            raise InvalidModelName(raw if isinstance(raw, str) else None)
        s = raw
        tag = ""
        # Same order as Ollama's ParseNameBare. "/" cannot occur in a tag, so a ":" only starts the tag
        # when it comes after the last "/"; otherwise it is the port in "host:5000/ns/model".
        if s.rfind(":") > s.rfind("/"):
            s, tag, _ = _cut_last(s, ":")
            if not tag:
                raise InvalidModelName(raw)
        namespace = host = ""
        s, model, cut = _cut_last(s, "/")
        if not cut:
            model = s
        else:
            s, namespace, cut = _cut_last(s, "/")
            if not cut:
                namespace = s
            else:
                # Ollama drops a URL scheme ("https://host/ns/model"); what is left must be a bare host,
                # so "a/b/c/d/e" fails here because its "host" still holds slashes.
                scheme, sep, rest = s.partition("://")
                host = rest if sep else scheme
            if not namespace:
                raise InvalidModelName(raw)
            if cut and not host:
                raise InvalidModelName(raw)
        if not model:
            raise InvalidModelName(raw)
        try:
            return cls(
                host=host or DEFAULT_HOST,
                namespace=namespace or DEFAULT_NAMESPACE,
                model=model,
                tag=tag or DEFAULT_TAG,
            )
        except InvalidModelName:
            raise InvalidModelName(raw) from None

    @classmethod
    def from_parts(cls, host: str, namespace: str, model: str, tag: str) -> ModelName:
        """Build a name from four path parts (a manifest path), validating each."""
        return cls(host=host, namespace=namespace, model=model, tag=tag)

    @property
    def display(self) -> str:
        """Ollama's DisplayShortest: drop the default host (and namespace), always keep the tag."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def canonical(self) -> str:
        """The fully qualified form, ``host/namespace/model:tag``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        """A case-folded tuple for dict keys and equality the way Ollama compares names."""
        # Names are ASCII-only (enforced above), so str.lower matches Go's ASCII-only downcase.
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def same(self, other: ModelName) -> bool:
        """Whether two names are equal ignoring case, like Ollama's Name.EqualFold."""
        return self.key == other.key

    def manifest_parts(self) -> tuple[str, str, str, str]:
        """The four path components of the manifest, ``manifests/<host>/<namespace>/<model>/<tag>``."""
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        """The short display form."""
        return self.display
