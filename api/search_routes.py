"""/v1/search: words and phrases across every transcript of the caller's tenant (jobs/search.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import RuntimeDep, TenantDep
from api.schemas import Problem, SearchHit, SearchResults
from jobs import collections, search

router = APIRouter(prefix="/v1/search", tags=["search"])


@router.get(
    "",
    response_model=SearchResults,
    responses={
        401: {"model": Problem, "description": "no API key, or an unknown one"},
        404: {"model": Problem, "description": "no such collection for this API key"},
        422: {"model": Problem, "description": "an empty or too long query"},
    },
)
def search_transcripts(
    rt: RuntimeDep,
    tenant: TenantDep,
    q: Annotated[
        str,
        Query(
            max_length=search.MAX_QUERY_CHARS,
            description='words (all must match) and "quoted phrases"; stemmed by each job\'s language',
        ),
    ],
    collection: Annotated[
        str | None, Query(max_length=200, description="only this collection's jobs (id or name)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=search.MAX_HITS)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> SearchResults:
    """Segments of your finished jobs that hold every word and phrase, best match first; each hit
    names the job, the segment (document.json's `segments`), its times and a snippet."""
    collection_id = collections.get(rt.db, tenant, collection).id if collection else None
    hits = search.search(rt.db, tenant, q, collection_id=collection_id, limit=limit, offset=offset)
    return SearchResults(
        query=q,
        hits=[
            SearchHit(job_id=h.job_id, segment=h.segment, start_s=h.start_s, end_s=h.end_s, snippet=h.snippet)
            for h in hits
        ],
        limit=limit,
        offset=offset,
    )
