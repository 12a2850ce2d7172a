"""Typed settings, read once per process from the environment: the base every process kind shares.

Ollama's variable names keep their meaning (OLLAMA_MODELS, OLLAMA_MAX_QUEUE, ...); Herd's own are HERD_*.
A bad value stops the process at start with a message naming the variable (see load_settings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from herd.redis_url import parse_redis_url

# HERD_DRAIN_SECONDS' default: the worker reads it, and the supervisor gives a stopping worker this much
# (plus a margin) before SIGKILL when the variable is unset.
DEFAULT_DRAIN_S = 30.0


def default_models_dir() -> Path:
    """Ollama's default store location for the current user."""
    return Path.home() / ".ollama" / "models"


def is_unset(value: object) -> bool:
    """Whether an environment value means "not set": compose passes an unset variable on as ""."""
    return isinstance(value, str) and not value.strip()


class CommonSettings(BaseSettings):
    """Settings every Herd process kind reads."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("HERD_REDIS_URL"),
        description="Redis connection URL shared by the API and the workers: redis://user:password@host:port/db, "
        "rediss:// for TLS, or redis+sentinel://[user:password@]sentinel1:26379,sentinel2:26379/<master>/db "
        "(rediss+sentinel:// for TLS) to follow Sentinel's failovers (herd/redis_connect.py).",
    )
    redis_ca: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_REDIS_CA"),
        description="PEM CA certificate(s) that a rediss:// Redis's certificate must chain to; unset: the system's.",
    )
    redis_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("HERD_REDIS_CERT"),
        description="PEM client certificate presented to a rediss:// Redis that asks for one (with HERD_REDIS_KEY).",
    )
    redis_key: Path | None = Field(
        default=None,
        validate_default=True,
        validation_alias=AliasChoices("HERD_REDIS_KEY"),
        description="The PEM private key of HERD_REDIS_CERT; set both or neither.",
    )
    models_dir: Path = Field(
        default_factory=default_models_dir,
        validation_alias=AliasChoices("OLLAMA_MODELS"),
        description="The model store, in Ollama's layout (manifests/ and blobs/).",
    )
    debug: bool = Field(
        default=False,
        validation_alias=AliasChoices("OLLAMA_DEBUG"),
        description="Log at debug level.",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: str) -> str:
        parse_redis_url(value)
        return value

    @field_validator("redis_ca", "redis_cert", "redis_key", mode="before")
    @classmethod
    def _redis_tls_unset(cls, value: Any) -> Any:
        # Unset means none, not the current directory.
        return None if is_unset(value) else value

    @field_validator("redis_ca", "redis_cert", "redis_key", mode="after")
    @classmethod
    def _redis_tls_files(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        names = {"redis_ca": "HERD_REDIS_CA", "redis_cert": "HERD_REDIS_CERT", "redis_key": "HERD_REDIS_KEY"}
        if info.field_name == "redis_key" and (value is None) != (info.data.get("redis_cert") is None):
            raise ValueError("HERD_REDIS_CERT and HERD_REDIS_KEY go together: set both or neither")
        if value is None:
            return None
        value = value.expanduser().absolute()
        if not value.is_file():
            raise ValueError(f"{names[info.field_name or '']} {value} is not a file")
        return value

    @field_validator("debug", mode="before")
    @classmethod
    def _debug_flag(cls, value: Any) -> Any:
        # Ollama treats any non-empty value other than false/0 as on (OLLAMA_DEBUG=1, =2 for trace).
        if isinstance(value, str):
            return value.strip().lower() not in ("", "0", "false", "no", "off")
        return value


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class SettingsError(SystemExit):
    """A bad environment value: the process exits with a message naming the variable."""


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read settings once at start; turn pydantic's errors into one message per bad variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            value = os.environ.get(name, error.get("input"))
            lines.append(f"invalid value {value!r} for {name}: {error['msg']}")
        raise SettingsError("herd: bad configuration\n  " + "\n  ".join(lines)) from None
