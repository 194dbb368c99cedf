"""API keys: random, shown once, stored as a SHA-256 hash. A tenant is created with its first key
(jobs/tenants.py owns the ``tenant`` table; this module owns ``apikey``).

A key looks like ``vbk_<prefix>_<secret>``; the prefix (public) names it in lists and logs, the
hash of the whole key is what the database holds. Keys are 256-bit random, so a plain hash (no
salt, no slow KDF) is enough: nobody can guess one, and lookups stay one indexed query.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col, select

from jobs.db import Database
from jobs.errors import InputError
from jobs.models import ApiKey, utcnow
from jobs.tenants import ensure_tenant

log = logging.getLogger(__name__)

KEY_PREFIX = "vbk_"
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_tenant_name(name: str) -> str:
    if not _TENANT_NAME.match(name):
        raise InputError(
            f"tenant name {name!r} must be 1-100 letters, digits, dots, dashes or underscores, "
            "starting with a letter or digit"
        )
    return name


def create_key(db: Database, tenant: str) -> str:
    """A new key for ``tenant`` (created, with its webhook secret, if new). Returns the key itself."""
    check_tenant_name(tenant)
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with db.session() as s:
        ensure_tenant(s, tenant)
        s.add(ApiKey(tenant=tenant, prefix=prefix, key_hash=hash_key(key)))
        s.commit()
    log.info("tenant %s: new API key %s", tenant, prefix)
    return key


def verify_key(db: Database, key: str) -> str | None:
    """The tenant owning ``key``, or None for an unknown or revoked key."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    digest = hash_key(key)
    with db.session() as s:
        row = s.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        # The lookup is by hash already; compare again in constant time for good measure.
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
            return None
        now = utcnow()
        # One write a minute per key at most: every request writing would contend with workers.
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            s.execute(update(ApiKey).where(col(ApiKey.id) == row.id).values(last_used_at=now))
            s.commit()
        return row.tenant
