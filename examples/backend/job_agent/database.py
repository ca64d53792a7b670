"""The job agent's database: SQLite (stdlib) by default, MySQL/MariaDB when a DSN is given.

Only the few statements the calculator needs differ between the two; they are spelled here.
The MySQL path needs ``pymysql`` and is not exercised by the test suite.
"""

from __future__ import annotations

import importlib
import random
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Optional, Protocol
from urllib.parse import unquote, urlsplit

RECS_PER_USER = 20

SKILLS = (
    *("python", "sql", "rust", "go", "java", "react", "docker", "k8s", "aws", "ml", "nlp"),
    *("data", "design", "sales", "writing", "support", "finance", "legal", "hr", "ops"),
)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def close(self) -> None: ...


class Connection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


class Database:
    """Connections and dialect of ``sqlite:///path`` or ``mysql://user:pw@host:port/db``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "sqlite":
            self.dialect = "sqlite"
            self.path = parts.path[1:] if url.startswith("sqlite:///") else parts.path
        elif parts.scheme in ("mysql", "mariadb", "mysql+pymysql"):
            self.dialect = "mysql"
            self._mysql = {
                "host": parts.hostname or "localhost",
                "port": parts.port or 3306,
                "user": unquote(parts.username or ""),
                "password": unquote(parts.password or ""),
                "database": parts.path.lstrip("/"),
            }
        else:
            raise ValueError(f"unsupported database URL scheme: {parts.scheme!r}")

    def __repr__(self) -> str:  # never shows a password
        where = self.path if self.dialect == "sqlite" else self._mysql["host"]
        return f"<Database {self.dialect} {where}>"

    def connect(self) -> Connection:
        if self.dialect == "sqlite":
            # Each caller (request thread, background task, batch) opens its own connection.
            # isolation_level=None: autocommit, as the backend's MySQL connection ran.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            # WAL + NORMAL: durable at checkpoints, no fsync per autocommitted statement
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn
        pymysql: Any = importlib.import_module("pymysql")  # optional: only for MySQL DSNs
        mysql: Connection = pymysql.connect(
            **self._mysql,
            autocommit=True,
            client_flag=pymysql.constants.CLIENT.FOUND_ROWS,  # rowcount = rows matched
        )
        return mysql

    def sql(self, statement: str) -> str:
        """``?`` placeholders in the driver's paramstyle."""
        return statement if self.dialect == "sqlite" else statement.replace("?", "%s")

    # -- statements that differ by dialect ----------------------------------------------------

    def upsert_recommendation(self, guard: str) -> str:
        """INSERT one row if ``guard`` holds; the backend's ON DUPLICATE KEY UPDATE."""
        cols = "user_id, job_id, rank, match_score, run_id, fencing_token, computed_at, saved_at"
        values = "?, ?, ?, ?, ?, ?, ?, ?"
        updated = ("rank", "match_score", "run_id", "fencing_token", "computed_at", "saved_at")
        if self.dialect == "sqlite":
            sets = ", ".join(f"{c} = excluded.{c}" for c in updated)
            return (
                f"INSERT INTO user_job_recommendations ({cols}) SELECT {values} WHERE {guard} "
                f"ON CONFLICT (user_id, job_id) DO UPDATE SET {sets}"
            )
        sets = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in updated)
        return self.sql(
            f"INSERT INTO user_job_recommendations ({cols.replace('rank', '`rank`')}) "
            f"SELECT {values} FROM DUAL WHERE {guard} ON DUPLICATE KEY UPDATE {sets}"
        )

    def insert_ignore_fence(self) -> str:
        verb = "INSERT OR IGNORE" if self.dialect == "sqlite" else "INSERT IGNORE"
        return self.sql(f"{verb} INTO recommendation_fences (user_id, fencing_token) VALUES (?, 0)")

    def init_schema(self, users: int, jobs: int, *, seed: int = 0) -> None:
        """Create the tables, and seed ``users`` users and ``jobs`` jobs if they are empty."""
        big, real, text = (
            ("INTEGER", "REAL", "TEXT")
            if self.dialect == "sqlite"
            else ("BIGINT", "DOUBLE", "VARCHAR(255)")
        )
        rank = "rank" if self.dialect == "sqlite" else "`rank`"
        conn = self.connect()
        try:
            cur = conn.cursor()
            if self.dialect == "sqlite":
                cur.execute("PRAGMA journal_mode = WAL")
            for ddl in (
                f"CREATE TABLE IF NOT EXISTS users (user_id {big} PRIMARY KEY, "
                f"skills {text} NOT NULL, profile_updated_at {real} NOT NULL)",
                f"CREATE TABLE IF NOT EXISTS jobs (job_id {big} PRIMARY KEY, "
                f"title {text} NOT NULL, skills {text} NOT NULL)",
                # Backend schema plus three columns: the run that wrote a row, its fencing
                # token, and when the run started computing / saved (for skip-if-fresh).
                f"CREATE TABLE IF NOT EXISTS user_job_recommendations ("
                f"user_id {big} NOT NULL, job_id {big} NOT NULL, {rank} INTEGER NOT NULL, "
                f"match_score {real} NOT NULL, run_id {text} NOT NULL, fencing_token {big}, "
                f"computed_at {real} NOT NULL, saved_at {real} NOT NULL, "
                f"UNIQUE (user_id, job_id))",
                # The highest fencing token that ever saved a user's set. It outlives the
                # rows (a save deletes them first), so a stale holder is refused even then.
                f"CREATE TABLE IF NOT EXISTS recommendation_fences ("
                f"user_id {big} PRIMARY KEY, fencing_token {big} NOT NULL)",
            ):
                cur.execute(ddl)
            cur.execute("SELECT COUNT(*) FROM users")
            if cur.fetchone()[0] == 0:
                rng = random.Random(seed)
                now = time.time()
                for job_id in range(1, jobs + 1):
                    cur.execute(
                        self.sql("INSERT INTO jobs VALUES (?, ?, ?)"),
                        (job_id, f"job {job_id}", " ".join(rng.sample(SKILLS, 4))),
                    )
                for user_id in range(1, users + 1):
                    cur.execute(
                        self.sql("INSERT INTO users VALUES (?, ?, ?)"),
                        (user_id, " ".join(rng.sample(SKILLS, 5)), now),
                    )
            conn.commit()
        finally:
            conn.close()

    def user_ids(self) -> list[int]:
        return [row[0] for row in self.query("SELECT user_id FROM users ORDER BY user_id")]

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(self.sql(statement), tuple(params))
            rows: list[Any] = cur.fetchall()
            return rows
        finally:
            conn.close()

    def set_profile(self, user_id: int, skills: Optional[str] = None) -> None:
        """The user finished profiling: new skills (if given) as of now."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            if skills is None:
                cur.execute(
                    self.sql("UPDATE users SET profile_updated_at = ? WHERE user_id = ?"),
                    (time.time(), user_id),
                )
            else:
                cur.execute(
                    self.sql(
                        "UPDATE users SET skills = ?, profile_updated_at = ? WHERE user_id = ?"
                    ),
                    (skills, time.time(), user_id),
                )
            conn.commit()
        finally:
            conn.close()

    def consistency(self) -> dict[str, Any]:
        """Per-user recommendation sets: a consistent one is exactly 20 rows of one run."""
        rows = self.query(
            "SELECT user_id, COUNT(*), COUNT(DISTINCT run_id) FROM user_job_recommendations "
            "GROUP BY user_id"
        )
        duplicate = [u for u, n, _ in rows if n > RECS_PER_USER]
        partial = [
            u for u, n, runs in rows if n < RECS_PER_USER or (n == RECS_PER_USER and runs > 1)
        ]
        return {
            "users_with_set": len(rows),
            "consistent": len(rows) - len(duplicate) - len(partial),
            "duplicate": len(duplicate),
            "partial": len(partial),
            "inconsistent_users": sorted(duplicate + partial),
        }
