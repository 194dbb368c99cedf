"""Search benchmark: N hours of generated transcripts indexed the way the reduce indexes them, then
query latency and the index's size against the text's.

    .venv/bin/python -m bench.search [--hours 1000] [--database sqlite|postgresql] [--queries 300]

Transcripts: 150 words a minute (a talk's pace) in segments of about 30 s, words drawn with a Zipf
law from 20,000 made-up words plus English function words, in recordings of 30 to 120 minutes
spread over 10 tenants; a tenth of them in French, the rest in English. ``--database postgresql``
runs a throwaway PostgreSQL server (``initdb`` from /usr/lib/postgresql).

Prints:

1. indexing: hours of transcript indexed per second of wall time (``jobs.search.index_job`` per
   recording, one transaction each, as the reduce does);
2. query latency over ``--queries`` queries of one tenant (a third single words, a third two
   words, a third two-word phrases, all taken from the text so they match; 20 hits a page):
   p50, p95, p99 and max, in ms;
3. the physical limit for one query without the index: the same database scanning the tenant's
   text (``LIKE``) for one word, and the index's speed-up against it;
4. the index's size (PostgreSQL: the GIN index and the tsvector column; SQLite: the FTS5 tables)
   against the text's size in UTF-8.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text

WORDS_PER_MINUTE = 150
SEGMENT_S = 30.0
TENANTS = 10
FUNCTION_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "that",
    "is",
    "it",
    "for",
    "on",
    "with",
    "as",
    "was",
    "we",
    "this",
    "be",
    "are",
    "you",
    "have",
    "not",
    "at",
    "but",
    "they",
    "by",
    "from",
    "so",
    "or",
    "an",
    "if",
    "will",
    "can",
    "which",
    "there",
    "all",
    "about",
    "what",
    "when",
    "one",
    "more",
    "would",
    "our",
    "like",
    "just",
    "do",
]


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice((2, 2, 3, 3, 4)))))
    return sorted(words)


class Talker:
    """Words with a Zipf law (function words most frequent), fast to draw."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = FUNCTION_WORDS + vocabulary(rng)
        weights = [1.0 / (rank + 1) for rank in range(len(self.words))]
        total = 0.0
        self.cumulative = []
        for w in weights:
            total += w
            self.cumulative.append(total)

    def sentence(self, n: int) -> str:
        words = self.rng.choices(self.words, cum_weights=self.cumulative, k=n)
        return " ".join(words).capitalize() + "."


def segments(talker: Talker, minutes: float) -> list[dict[str, object]]:
    out = []
    n_segments = max(1, round(minutes * 60 / SEGMENT_S))
    for n in range(n_segments):
        start = n * SEGMENT_S
        words = int(WORDS_PER_MINUTE * SEGMENT_S / 60)
        out.append(
            {
                "index": n,
                "start_s": start + 0.4,
                "end_s": start + SEGMENT_S - 0.3,
                "text": " ".join(talker.sentence(max(3, words // 4)) for _ in range(4)),
            }
        )
    return out


@contextlib.contextmanager
def throwaway_postgres(root: Path) -> Iterator[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)")
    bindir = Path(found[-1]).parent
    run_as: dict[str, object] = {}
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        run_as = {"user": pg.pw_uid, "group": pg.pw_gid, "extra_groups": []}
        user = "postgres"
        for parent in [root, *root.parents]:  # temporary directories are 0700: let it reach its own
            if parent == Path("/"):
                break
            os.chmod(parent, parent.stat().st_mode | 0o711)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        **run_as,  # type: ignore[arg-type]
    )
    subprocess.run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "-o",
         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
        check=True,
        capture_output=True,
        **run_as,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            **run_as,  # type: ignore[arg-type]
        )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def sizes(db: object) -> tuple[int, dict[str, int]]:
    """The text's bytes and the index's parts' bytes."""

    from jobs import search

    engine = db.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        text_bytes = int(
            conn.execute(
                text("SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM searchsegment")
            ).scalar_one()
            if engine.dialect.name == "sqlite"
            else conn.execute(
                text("SELECT COALESCE(SUM(octet_length(text)), 0) FROM searchsegment")
            ).scalar_one()
        )
        if engine.dialect.name == "sqlite":
            rows = conn.execute(
                text(
                    "SELECT name, SUM(pgsize) FROM dbstat WHERE name LIKE 'searchsegment_fts_%' GROUP BY name"
                )
            ).all()
            tables: dict[str, int] = {}
            for name, size in rows:  # each FTS5 table with its shadow tables
                table = next(t for t in search.FTS_TABLES if str(name).startswith(t))
                label = "FTS5 " + table.rsplit("_", 1)[-1]
                tables[label] = tables.get(label, 0) + int(size)
            return text_bytes, tables
        parts = {
            "GIN index": int(
                conn.execute(text("SELECT pg_relation_size('ix_searchsegment_tsv')")).scalar_one()
            ),
            "tsvector column": int(
                conn.execute(
                    text("SELECT COALESCE(SUM(pg_column_size(tsv)), 0) FROM searchsegment")
                ).scalar_one()
            ),
        }
        return text_bytes, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1000.0)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=22)
    args = parser.parse_args()

    from jobs import search
    from jobs.db import Database

    rng = random.Random(args.seed)
    talker = Talker(rng)
    with tempfile.TemporaryDirectory(prefix="voxbatch-search-") as tmp_name:
        tmp = Path(tmp_name)
        with contextlib.ExitStack() as stack:
            if args.database == "postgresql":
                (tmp / "pg").mkdir()
                url = stack.enter_context(throwaway_postgres(tmp / "pg"))
            else:
                url = f"sqlite:///{tmp / 'search.db'}"
            db = Database(url)
            db.migrate()

            # 1. Indexing, recording by recording, as the reduce does.
            indexed_min = 0.0
            n_jobs = n_segments = 0
            samples: list[str] = []
            index_s = 0.0
            while indexed_min < args.hours * 60:
                minutes = min(rng.uniform(30, 120), args.hours * 60 - indexed_min)
                segs = segments(talker, minutes)
                tenant = f"t{n_jobs % TENANTS}"
                language = "fr" if n_jobs % 10 == 9 else "en"
                if tenant == "t0" and len(samples) < 5_000:
                    samples.extend(str(s["text"]) for s in rng.sample(segs, min(5, len(segs))))
                started = time.perf_counter()
                search.index_job(db, f"job{n_jobs:06d}", tenant, None, language, segs)
                index_s += time.perf_counter() - started
                indexed_min += minutes
                n_jobs += 1
                n_segments += len(segs)
            hours = indexed_min / 60
            print(f"database: {db.engine.dialect.name}")
            print(
                f"indexed: {hours:.0f} h of transcript, {n_jobs} recordings, {n_segments} segments, "
                f"{TENANTS} tenants, in {index_s:.1f} s: {hours / index_s:.1f} h/s "
                f"({n_segments / index_s:.0f} segments/s)"
            )
            if db.engine.dialect.name == "postgresql":
                with db.engine.begin() as conn:
                    conn.execute(text("ANALYZE searchsegment"))

            # 2. Queries of tenant t0, taken from its text so they match.
            queries: list[str] = []
            for n in range(args.queries):
                words = [w.strip(".").lower() for w in rng.choice(samples).split()]
                content = [w for w in words if w not in FUNCTION_WORDS] or words
                if n % 3 == 0:
                    queries.append(rng.choice(content))
                elif n % 3 == 1:
                    queries.append(" ".join(rng.sample(content, min(2, len(content)))))
                else:
                    at = rng.randrange(max(1, len(words) - 1))
                    queries.append('"' + " ".join(words[at : at + 2]) + '"')
            search.search(db, "t0", queries[0])  # warm the caches once
            latencies: list[float] = []
            by_kind: dict[str, list[float]] = {"one word": [], "two words": [], "phrase": []}
            hits = 0
            for n, q in enumerate(queries):
                started = time.perf_counter()
                found = search.search(db, "t0", q, limit=20)
                latencies.append((time.perf_counter() - started) * 1000)
                by_kind[("one word", "two words", "phrase")[n % 3]].append(latencies[-1])
                hits += bool(found)
            print(
                f"queries: {len(queries)} of tenant t0 ({hits} with hits): "
                f"p50 {percentile(latencies, 50):.1f} ms, "
                f"p95 {percentile(latencies, 95):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
                f"max {max(latencies):.1f} ms (mean {statistics.fmean(latencies):.1f} ms)"
            )
            for kind, values in by_kind.items():
                print(f"  {kind}: p50 {percentile(values, 50):.1f} ms, p95 {percentile(values, 95):.1f} ms")

            # 3. The single words found by scanning the tenant's text (every match, as ranking needs):
            # what the index saves.
            scans: list[float] = []
            with db.engine.connect() as conn:
                for word in queries[0:30:3]:
                    started = time.perf_counter()
                    conn.execute(
                        text("SELECT id FROM searchsegment WHERE tenant = :t AND lower(text) LIKE :w"),
                        {"t": "t0", "w": f"%{word}%"},
                    ).all()
                    scans.append((time.perf_counter() - started) * 1000)
            words = by_kind["one word"]
            print(
                f"scan without the index (LIKE over t0's {hours / TENANTS:.0f} h, 10 one-word queries): "
                f"p50 {percentile(scans, 50):.0f} ms; the index's one-word p50 is "
                f"{percentile(scans, 50) / percentile(words, 50):.0f}x faster"
            )

            # 4. Sizes.
            text_bytes, parts = sizes(db)
            index_bytes = sum(parts.values())
            detail = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sorted(parts.items()))
            print(
                f"size: text {text_bytes / 1e6:.0f} MB, index {index_bytes / 1e6:.0f} MB "
                f"({index_bytes / text_bytes:.2f}x the text; {detail})"
            )
            db.engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
