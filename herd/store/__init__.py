"""The model store, in Ollama's on-disk layout so an existing OLLAMA_MODELS directory is served unchanged.

Layout under the root::

    manifests/<host>/<namespace>/<model>/<tag>   Docker v2 manifest JSON
    blobs/sha256-<64 hex>                         content-addressed layers and config

Decisions worth knowing:

* Lookups are case-insensitive like Ollama's (``Name.EqualFold``): the exact path is tried first, then a
  case-folded scan. Names keep the casing they have on disk, and writing a name that already exists in
  another casing overwrites that manifest rather than creating a second one (Ollama's getExistingName).
* ``list()`` skips (and logs) manifests it cannot use; ``get()`` raises :class:`ModelNotFound` when no
  manifest file exists and :class:`StoreError` when one exists but is broken (bad JSON, a missing or
  truncated blob, no model layer), so the caller can tell "no such model" from "the store is damaged".
* ``size`` is the sum of the layer sizes plus the config blob, which is what Ollama's Manifest.Size()
  reports in /api/tags.
* Writers never expose partial state: blobs are written to ``sha256-<hex>-partial-<random>`` and renamed,
  a manifest is written to a hidden temp file beside it and renamed, and only after every blob it names
  exists. Manifest writes and deletes hold an flock on the root directory so a delete's garbage
  collection cannot race a new manifest that shares its blobs.
"""

from herd.store.errors import MissingBlob, ModelNotFound, StoreError
from herd.store.manifests import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
)
from herd.store.model import StoredModel
from herd.store.model_store import ModelStore

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "MEDIA_ADAPTER",
    "MEDIA_LICENSE",
    "MEDIA_MESSAGES",
    "MEDIA_MODEL",
    "MEDIA_PARAMS",
    "MEDIA_PROJECTOR",
    "MEDIA_SYSTEM",
    "MEDIA_TEMPLATE",
    "MissingBlob",
    "ModelNotFound",
    "ModelStore",
    "StoreError",
    "StoredModel",
]
