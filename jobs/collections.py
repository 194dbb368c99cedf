"""Collections: recordings that belong together (a conference's programme, a quarter's meetings).
The one owner of the ``collection`` table.

A collection belongs to one tenant and has a name unique within it (also the drop folder's
``inbox/<collection>/`` folder) and options its jobs share (preset, instructions, vocabulary,
language, priority): a job that joins it at submission takes each option it does not set itself
(``with_collection``). Jobs point at it with ``Job.collection_id`` (written by ``jobs.store``).
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import delete, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from jobs.db import Database
from jobs.errors import Conflict, InputError, NotFound
from jobs.languages import check_language
from jobs.limits import MAX_COLLECTION_NAME_CHARS, MAX_INSTRUCTIONS_CHARS
from jobs.models import Collection
from jobs.options import JobOptions, check_priority, check_vocabulary
from jobs.presets import get_preset


def check_name(name: str) -> str:
    """A name that is also a safe folder name: no slash, no control character, not . or .."""
    cleaned = " ".join((name or "").split())
    if not cleaned:
        raise InputError("a collection needs a name")
    if len(cleaned) > MAX_COLLECTION_NAME_CHARS:
        raise InputError(f"a collection's name is at most {MAX_COLLECTION_NAME_CHARS} characters")
    if cleaned in (".", "..") or any(ord(c) < 32 or c in '/\\"<>' for c in cleaned):
        raise InputError(
            "a collection's name may not be . or .. nor hold / \\ \" < > or control characters: "
            f"{cleaned[:40]!r}"
        )
    return cleaned


def create(db: Database, tenant: str | None, name: str, options: JobOptions) -> Collection:
    """A new collection with the options given (each checked as a job's would be)."""
    instructions = (options.instructions or "").strip() or None
    if instructions and len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise InputError(f"instructions are longer than {MAX_INSTRUCTIONS_CHARS} characters")
    row = Collection(
        tenant=tenant,
        name=check_name(name),
        preset=get_preset(options.preset).name if options.preset else None,
        instructions=instructions,
        vocabulary=check_vocabulary(options.vocabulary),
        language=check_language(options.language),
        priority=check_priority(options.priority).value if options.priority else None,
    )
    if find(db, tenant, row.name) is not None:
        raise Conflict(f"a collection named {row.name!r} exists")
    with db.session() as s:
        s.add(row)
        try:
            s.commit()
        except IntegrityError:
            raise Conflict(f"a collection named {row.name!r} exists") from None
        s.refresh(row)
    return row


def _mine(tenant: str | None) -> object:
    return col(Collection.tenant).is_(None) if tenant is None else col(Collection.tenant) == tenant


def find(db: Database, tenant: str | None, ref: str) -> Collection | None:
    """The tenant's collection with this id or name; another tenant's is not found."""
    ref = (ref or "").strip()[: MAX_COLLECTION_NAME_CHARS * 2]
    # No id or name holds a control character; PostgreSQL refuses a NUL in a parameter outright.
    if not ref or any(ord(c) < 32 for c in ref):
        return None
    with db.session() as s:
        rows = list(
            s.exec(
                select(Collection).where(
                    _mine(tenant),  # type: ignore[arg-type]
                    or_(col(Collection.id) == ref, col(Collection.name) == ref),
                )
            )
        )
    # An id wins over another collection's name that happens to look like it.
    return next((r for r in rows if r.id == ref), rows[0] if rows else None)


def find_by_id(db: Database, collection_id: str) -> Collection | None:
    with db.session() as s:
        return s.get(Collection, collection_id)


def owners(db: Database, ref: str) -> list[str]:
    """The tenants that have a collection with this id or name (for the operator's command line,
    which sees every tenant; never for an API answer)."""
    ref = (ref or "").strip()[: MAX_COLLECTION_NAME_CHARS * 2]
    if not ref or any(ord(c) < 32 for c in ref):
        return []
    with db.session() as s:
        rows = s.exec(
            select(Collection.tenant).where(
                col(Collection.tenant).is_not(None),
                or_(col(Collection.id) == ref, col(Collection.name) == ref),
            )
        )
        return sorted(str(t) for t in rows)


def get(db: Database, tenant: str | None, ref: str) -> Collection:
    row = find(db, tenant, ref)
    if row is None:
        raise NotFound(f"no collection {ref[:100]!r}")
    return row


def list_for(db: Database, tenant: str | None) -> list[Collection]:
    with db.session() as s:
        return list(s.exec(select(Collection).where(_mine(tenant)).order_by(col(Collection.created_at))))  # type: ignore[arg-type]


def with_collection(db: Database, tenant: str | None, options: JobOptions) -> JobOptions:
    """The options with the collection's id and each shared option the job does not set itself."""
    if not options.collection:
        return options
    c = get(db, tenant, options.collection)
    return replace(
        options,
        collection=c.id,
        preset=options.preset or c.preset,
        instructions=options.instructions or c.instructions,
        vocabulary=_joined(c.vocabulary, options.vocabulary),
        language=options.language or c.language,
        priority=options.priority or c.priority,
    )


def _joined(shared: str | None, own: str | None) -> str | None:
    """The collection's vocabulary and the job's own terms (a talk's speakers), both kept."""
    parts = [p for p in (shared, own) if p and p.strip()]
    return "\n".join(parts) or None


def remove(db: Database, collection_id: str) -> None:
    """Delete the collection's row (its jobs are deleted first: jobs/retention.py)."""
    with db.session() as s:
        s.execute(delete(Collection).where(col(Collection.id) == collection_id))
        s.commit()


def proceedings_prefix(collection_id: str) -> str:
    """Where a collection's proceedings are stored (jobs/proceedings.py)."""
    return f"collections/{collection_id}/"
