"""Settings of the registry client (pulls and pushes), read once by the process that runs them."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator

from herd.settings import CommonSettings
from workers.store.registry.guard import AllowList


class RegistrySettings(CommonSettings):
    """Trust, parallelism and timeouts for registry transfers.

    Proxies are not fields here: they come from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read per request
    the way Ollama (Go's net/http) reads them, see :mod:`workers.store.registry.proxies`.
    """

    ca_bundle: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_CA_BUNDLE"),
        description="A PEM file of extra CA certificates (a corporate CA), trusted on top of the system store.",
    )
    part_size: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        validation_alias=AliasChoices("HERD_PULL_PART_SIZE"),
        description="Bytes per ranged part of a blob download; smaller blobs are fetched in one part.",
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        validation_alias=AliasChoices("HERD_PULL_CONCURRENCY"),
        description="Ranged parts of one blob downloaded at the same time.",
    )
    retries: int = Field(
        default=3,
        ge=0,
        le=20,
        validation_alias=AliasChoices("HERD_PULL_RETRIES"),
        description="Times a broken part download is resumed before the pull fails.",
    )
    connect_timeout_s: float = Field(
        default=15.0,
        gt=0,
        validation_alias=AliasChoices("HERD_REGISTRY_CONNECT_TIMEOUT"),
        description="Seconds to connect (through the proxy, TLS included) before giving up.",
    )
    read_timeout_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("HERD_REGISTRY_READ_TIMEOUT"),
        description="Seconds without a byte from the registry before a request counts as broken.",
    )

    registry_allow: str = Field(
        default="",
        validation_alias=AliasChoices("HERD_REGISTRY_ALLOW"),
        description="Registries on loopback, link-local or cloud metadata addresses that pulls and pushes "
        "may reach (refused otherwise): comma-separated host names, host:port, IP addresses or CIDR ranges.",
    )

    @field_validator("registry_allow")
    @classmethod
    def _allow_list_parses(cls, value: str) -> str:
        AllowList.parse(value)  # a bad entry stops the store worker at start, not its first pull
        return value

    @property
    def allow_list(self) -> AllowList:
        """HERD_REGISTRY_ALLOW, parsed."""
        return AllowList.parse(self.registry_allow)

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        # A typo here would otherwise show up only as "certificate not trusted" on the first pull.
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value
