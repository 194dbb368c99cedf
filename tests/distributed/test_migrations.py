"""Alembic migrations: empty → head on SQLite and PostgreSQL, the result matches the models, databases
made before migrations existed are adopted, and processes starting at once do not trip over each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from jobs.db import Database
from jobs.migrations_runner import (
    FIRST_REVISION,
    FTS_TABLE_PREFIX,
    alembic_config,
    current_revision,
    head_revision,
    include_name,
)
from jobs.settings import Settings
from tests.fixtures.services import Postgres

TABLES = {"job", "window", "tenant", "apikey", "dropobject", "collection", "searchsegment", "alembic_version"}


def _diff(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        # SQLite's FTS5 tables are raw DDL, not models: test_the_full_text_index_exists checks them.
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
        return list(compare_metadata(ctx, SQLModel.metadata))


def _url(postgres: Postgres) -> str:
    return Settings(database_url=postgres.fresh_database_url()).resolved_database_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'v.db'}"
    return _url(request.getfixturevalue("postgres"))


def test_an_empty_database_migrates_to_head_matching_the_models(empty_url: str) -> None:
    db = Database(empty_url)
    db.migrate()
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    with db.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    assert _diff(db) == []
    db.migrate()  # at head: nothing to do


def test_the_full_text_index_exists(empty_url: str) -> None:
    db = Database(empty_url)
    db.migrate()
    if db.engine.dialect.name == "sqlite":
        with db.engine.connect() as conn:
            virtual = conn.execute(
                text("SELECT name FROM sqlite_master WHERE sql LIKE 'CREATE VIRTUAL TABLE%fts5%'")
            ).scalars()
            assert {n for n in virtual if n.startswith(FTS_TABLE_PREFIX)} == {
                "searchsegment_fts_stem",
                "searchsegment_fts_plain",
            }
    else:
        indexes = {i["name"]: i for i in inspect(db.engine).get_indexes("searchsegment")}
        assert indexes["ix_searchsegment_tsv"]["dialect_options"].get("postgresql_using") == "gin"


def test_a_database_made_before_migrations_is_stamped_then_upgraded(empty_url: str) -> None:
    # What create_all made before migrations existed: the first revision's tables, no version row.
    db = Database(empty_url)
    with db.engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, FIRST_REVISION)
        conn.execute(text("DROP TABLE alembic_version"))
    db.migrate()
    with db.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    assert _diff(db) == []


def test_downgrade_to_base_and_back(postgres: Postgres) -> None:
    from alembic import command

    from jobs.migrations_runner import alembic_config

    db = Database(_url(postgres))
    db.migrate()
    with db.engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.migrate()
    assert _diff(db) == []


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_processes_starting_at_once_migrate_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}" if kind == "sqlite" else _url(request.getfixturevalue("postgres"))
    code = "import sys; from jobs.db import Database; Database(sys.argv[1]).migrate()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    db = Database(url)
    with db.engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    assert _diff(db) == []
