"""Registry client: pull models from and push them to Ollama-compatible (OCI distribution) registries.

Pure Python over httpx, run inside store-worker jobs (never in the web process): proxies from
HTTPS_PROXY/HTTP_PROXY/NO_PROXY, a corporate CA from HERD_CA_BUNDLE, Ollama's ``insecure`` flag.
"""

from workers.store.registry.errors import RegistryCancelled, RegistryError
from workers.store.registry.pull import pull_model
from workers.store.registry.push import push_model
from workers.store.registry.settings import RegistrySettings

__all__ = ["RegistryCancelled", "RegistryError", "RegistrySettings", "pull_model", "push_model"]
