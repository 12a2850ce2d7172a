"""Who may use the stack's Redis: its password, made once, and the ACL users of the API and the workers.

Redis always asks for a password. The admin password (Redis's ``default`` user, for the operator and the
supervisor's own checks) is HERD_REDIS_PASSWORD, else a random one written once to ``<run dir>/redis/
password`` (readable by its owner only). Each ACL user's password is derived from it with HMAC, so one
secret is kept and rotating it rotates all, while a worker host's password never reveals the admin's.

The API (``herd-api``) and the workers (``herd-worker``) each get only the key patterns Herd uses (RQ's
``rq:*`` and Herd's ``herd:*``, herd/contracts.py), and the command categories of the data types there;
neither may run an admin or dangerous command (CONFIG, FLUSHALL, KEYS, ACL, SHUTDOWN, DEBUG, MONITOR...).
The workers additionally read INFO and CLIENT LIST, which RQ's worker calls; the API blocks on nothing but
the event streams (XREAD), so blocking list pops are the workers' alone.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

ADMIN_USER = "default"
API_USER = "herd-api"
WORKER_USER = "herd-worker"

# Herd's keys (herd/contracts.py KEY_PREFIX) and RQ's (rq.defaults: every key and pub/sub channel of RQ
# starts with rq:); the same patterns for the pub/sub channels RQ sends worker commands on.
KEY_PATTERNS = ("rq:*", "herd:*")

# The data commands both users need, as ACL categories, then what neither may run whatever its category.
_DATA = (
    "+@connection +@string +@list +@hash +@set +@sortedset +@stream +@pubsub +@scripting +@transaction "
    "+@keyspace -@admin -@dangerous -function -script|flush -script|kill -script|debug -client|pause "
    "-client|unpause -client|kill -client|no-evict -client|tracking -move"
)
_RULES = {
    # INFO: RQ reads the server version; CLIENT LIST: RQ's fallback for its own address.
    WORKER_USER: f"{_DATA} +info +client|list",
    API_USER: f"{_DATA} -@blocking +xread",
}
USERS = tuple(_RULES)


def user_rules(user: str) -> str:
    """The command rules of ACL user ``user`` (after its keys and channels), as redis.conf writes them."""
    return _RULES[user]


def admin_password(run_dir: Path, configured: str | None) -> str:
    """HERD_REDIS_PASSWORD, else the one kept in the run dir, made (once) when there is none yet."""
    if configured:
        return configured
    path = Path(run_dir) / "redis" / "password"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    # Created with owner-only permissions and never overwritten: two processes racing both read the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def user_password(admin: str, user: str) -> str:
    """The password of ACL user ``user``: an HMAC of its name under the admin password."""
    if user == ADMIN_USER:
        return admin
    return hmac.new(admin.encode(), user.encode(), hashlib.sha256).hexdigest()


def _hashed(password: str) -> str:
    # redis.conf holds only the SHA-256 of each password (ACL's #<hex> form), never the password itself.
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def acl_lines(admin: str) -> list[str]:
    """The redis.conf ``user`` lines: the admin (all commands and keys) and the two restricted users."""
    keys = " ".join(f"~{p}" for p in KEY_PATTERNS)
    channels = " ".join(f"&{p}" for p in KEY_PATTERNS)
    lines = [f"user {ADMIN_USER} on {_hashed(admin)} ~* &* +@all"]
    for user, rules in _RULES.items():
        password = _hashed(user_password(admin, user))
        lines.append(
            f"user {user} reset on {password} resetkeys {keys} resetchannels {channels} -@all {rules}"
        )
    return lines
