"""The registry client's errors: one exception type whose message names the host and the cause."""

from __future__ import annotations


class RegistryError(Exception):
    """A pull or push failed; ``status`` is the HTTP status the API should answer with."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class RegistryCancelled(RegistryError):
    """The client went away; the transfer stopped and its partial files stay for a resume."""

    def __init__(self, what: str) -> None:
        # 499 is nginx's "client closed request": nobody reads the answer, but logs should say why.
        super().__init__(f"{what} cancelled", status=499)
