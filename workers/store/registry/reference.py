"""Where a model lives in a registry: a ModelName turned into OCI distribution API URLs.

``host/namespace/model:tag`` maps to ``https://host/v2/namespace/model/manifests/tag`` and
``.../blobs/<digest>``, as Ollama does for registry.ollama.ai and any Docker-style registry.

Hugging Face (``hf.co/<user>/<repo>[:<quant>]``, also spelled ``huggingface.co``) serves the same API
for GGUF repositories, with the quantization as the tag: HF picks the repository's GGUF file for the
quant (case-insensitive). Like Ollama, we ask for the tag as written, ``latest`` included, and let HF
resolve ``latest`` to Q4_K_M (or the closest file the repository has), so a repository without a
Q4_K_M file still pulls; the model is stored under the name the user typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from herd.names import ModelName

_DIGEST_RE = re.compile(r"sha256:([0-9a-fA-F]{64})")


def normalise_digest(value: object) -> str | None:
    """``sha256:<64 hex>`` in lower case, or None when ``value`` is not such a digest."""
    m = _DIGEST_RE.fullmatch(value) if isinstance(value, str) else None
    return f"sha256:{m.group(1).lower()}" if m else None


HUGGING_FACE_HOSTS = frozenset({"hf.co", "huggingface.co"})
# Hugging Face's choice for `latest`, and Ollama's documented default quant for hf.co pulls.
HUGGING_FACE_DEFAULT_QUANT = "Q4_K_M"


@dataclass(frozen=True)
class Reference:
    """One model's repository on one registry, and the URLs the client needs."""

    name: ModelName
    scheme: str = "https"

    @classmethod
    def for_name(cls, name: ModelName) -> Reference:
        """The reference for ``name`` over https (``insecure`` may still downgrade it, see the client)."""
        return cls(name=name)

    @property
    def host(self) -> str:
        """The registry host, with its port when the name has one."""
        return self.name.host

    @property
    def hostname(self) -> str:
        """The host without a port."""
        return self.name.host.rsplit(":", 1)[0] if ":" in self.name.host else self.name.host

    @property
    def repository(self) -> str:
        """``namespace/model``, the repository part of every URL and of the token scope."""
        return f"{self.name.namespace}/{self.name.model}"

    @property
    def is_hugging_face(self) -> bool:
        """Whether the host is Hugging Face's GGUF registry."""
        return self.hostname.lower() in HUGGING_FACE_HOSTS

    @property
    def base(self) -> str:
        """``scheme://host/v2/namespace/model``."""
        return f"{self.scheme}://{self.host}/v2/{self.repository}"

    def manifest_url(self) -> str:
        """The manifest of this name's tag."""
        return f"{self.base}/manifests/{quote(self.name.tag, safe='')}"

    def blob_url(self, digest: str) -> str:
        """One blob of the repository."""
        return f"{self.base}/blobs/{digest}"

    def uploads_url(self) -> str:
        """Where a push starts a blob upload."""
        return f"{self.base}/blobs/uploads/"
