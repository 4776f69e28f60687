"""Chat feedback in a SQLite file: insert-only, safe under concurrent writers.

Every thumbs up/down (with an optional comment) becomes one new row holding the
question, the answer text, its citations (JSON), the rating, the comment, the time
and the app version. Rows are never updated or deleted: triggers in the database
refuse ``UPDATE``, ``DELETE`` and any insert that would land on an existing id
(``INSERT OR REPLACE``, ``REPLACE INTO``, upserts), so a later vote adds a row rather
than replacing an earlier one. The triggers guard against mistakes and against
clients of the SQL interface, not against someone who can write the file itself
(they can drop the triggers); the README says what is and is not guaranteed.

Concurrency: the database runs in WAL mode with a busy timeout, every insert is its
own short ``BEGIN IMMEDIATE`` transaction on a fresh connection, and writers in one
process are serialised by a lock, so threads (and several server processes sharing
the file) never lose a row.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sqlite3
import tempfile
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal

from indexer.errors import MyoQAError

log = logging.getLogger(__name__)

Rating = Literal["up", "down"]
RATINGS: tuple[str, ...] = ("up", "down")

#: Longest comment kept; a longer one is refused rather than silently cut.
MAX_COMMENT_CHARS = 2000
#: Bumped when the table layout changes (stored in ``PRAGMA user_version``).
SCHEMA_VERSION = 1
#: Columns of the export, in order.
CSV_COLUMNS = (
    "id",
    "created_at",
    "app_version",
    "rating",
    "comment",
    "question",
    "answer",
    "cited_sources",
    "citations",
    "mode",
    "channel",
)
#: Characters that make a spreadsheet read a cell as a formula (after NFKC, so the
#: full-width ``＝ ＋ － ＠`` count too), and the ones that may hide in front of them.
_FORMULA_START = frozenset("=+-@")
_CONTROL_START = ("\t", "\r", "\n")
#: Permissions of an exported CSV: it holds trainees' questions and comments.
EXPORT_MODE = 0o600


class FeedbackWriteError(MyoQAError):
    """A vote could not be written (disk full, read-only file, locked or broken database).

    Not the voter's fault: the web layer answers 503 and says the vote was not stored.
    """


_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  TEXT    NOT NULL,
    app_version TEXT    NOT NULL,
    question    TEXT    NOT NULL,
    answer      TEXT    NOT NULL,
    citations   TEXT    NOT NULL,
    rating      TEXT    NOT NULL CHECK (rating IN ('up', 'down')),
    comment     TEXT    NOT NULL DEFAULT '',
    mode        TEXT    NOT NULL DEFAULT '',
    channel     TEXT    NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS feedback_no_update BEFORE UPDATE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is insert-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_no_delete BEFORE DELETE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is insert-only'); END;
-- INSERT OR REPLACE / REPLACE INTO delete the old row without firing the delete
-- trigger: refuse any insert whose id is taken. (An id left to SQLite reads as -1
-- here, so no row may ever have an id below 1; the second trigger sees to that.)
CREATE TRIGGER IF NOT EXISTS feedback_no_replace BEFORE INSERT ON feedback
WHEN EXISTS (SELECT 1 FROM feedback WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'feedback is insert-only: that id is taken'); END;
CREATE TRIGGER IF NOT EXISTS feedback_positive_id AFTER INSERT ON feedback
WHEN NEW.id < 1
BEGIN SELECT RAISE(ABORT, 'feedback ids are chosen by the database'); END;
"""


def app_version() -> str:
    """The installed myositis-qa version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("myositis-qa")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class FeedbackRow:
    """One stored vote, as read back from the database."""

    id: int
    created_at: str
    app_version: str
    question: str
    answer: str
    citations: list[dict[str, Any]]
    rating: str
    comment: str
    mode: str
    channel: str


class FeedbackStore:
    """Insert-only feedback over one SQLite file.

    Args:
        path: The database file; its folder is created when missing.
        busy_timeout_ms: How long a writer waits for another process's lock.
        version: App version recorded with every row (defaults to the installed one).
    """

    def __init__(
        self, path: Path | str, busy_timeout_ms: int = 10_000, version: str | None = None
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.version = version or app_version()
        self._lock = threading.Lock()
        self._ready = False
        #: Why the latest write failed (no server path in it), None once a write succeeds.
        self.write_error: str | None = None

    # --- connection ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        self._ensure_schema()
        with closing(self._connect()) as conn:
            yield conn

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with closing(self._connect()) as conn:
                    conn.execute("PRAGMA journal_mode = WAL")
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    if version not in (0, SCHEMA_VERSION):
                        raise MyoQAError(
                            f"{self.path} holds feedback schema version {version}; this app "
                            f"writes version {SCHEMA_VERSION}. Point paths.feedback_db at a new file."
                        )
                    conn.executescript(_SCHEMA)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except sqlite3.DatabaseError as exc:
                raise MyoQAError(f"Cannot open the feedback database {self.path}: {exc}") from exc
            self._ready = True

    # --- writing ------------------------------------------------------------------

    def add(
        self,
        *,
        question: str,
        answer: str,
        citations: Sequence[dict[str, Any]],
        rating: str,
        comment: str = "",
        mode: str = "",
        channel: str = "",
    ) -> int:
        """Store one vote and return its row id.

        Args:
            question: The question that was answered.
            answer: The answer text as shown.
            citations: The answer's citations (``Citation.model_dump()`` dicts).
            rating: ``"up"`` or ``"down"``.
            comment: Optional free text, at most ``MAX_COMMENT_CHARS`` characters.
            mode: The answer mode that produced the answer (``extractive``, ``llm:...``).
            channel: Where the vote came from (``ui``, ``api``).

        Raises:
            MyoQAError: For an unknown rating or an over-long comment.
            FeedbackWriteError: When the database cannot be written (disk full,
                read-only or broken file); logged with the path and the cause.
        """
        if rating not in RATINGS:
            raise MyoQAError(f"Rating must be 'up' or 'down', not {rating!r}.")
        comment = (comment or "").strip()
        if len(comment) > MAX_COMMENT_CHARS:
            raise MyoQAError(
                f"The comment is {len(comment)} characters long; the limit is {MAX_COMMENT_CHARS}."
            )
        row = (
            datetime.now(UTC).isoformat(timespec="milliseconds"),
            self.version,
            question,
            answer,
            json.dumps(list(citations), ensure_ascii=False),
            rating,
            comment,
            mode,
            channel,
        )
        try:
            self._ensure_schema()
            with self._lock, closing(self._connect()) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    cursor = conn.execute(
                        "INSERT INTO feedback (created_at, app_version, question, answer, "
                        "citations, rating, comment, mode, channel) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError, MyoQAError) as exc:
            cause = _write_failure(exc)
            self.write_error = f"The latest vote was not stored: {cause}."
            log.error("Could not store a %s vote in %s: %s", rating, self.path, exc)
            raise FeedbackWriteError(
                f"Your vote was not stored: {cause}. The error was logged; please try again "
                "later or tell the course team."
            ) from exc
        self.write_error = None
        row_id = cursor.lastrowid
        assert row_id is not None
        log.info("Stored %s feedback #%s", rating, row_id)
        return row_id

    # --- reading ------------------------------------------------------------------

    def count(self) -> int:
        """Number of stored votes."""
        with self._connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def rows(self) -> list[FeedbackRow]:
        """Every stored vote, oldest first."""
        with self._connection() as conn:
            cursor = conn.execute(
                "SELECT id, created_at, app_version, question, answer, citations, rating, "
                "comment, mode, channel FROM feedback ORDER BY id"
            )
            return [
                FeedbackRow(
                    id=r[0],
                    created_at=r[1],
                    app_version=r[2],
                    question=r[3],
                    answer=r[4],
                    citations=json.loads(r[5]),
                    rating=r[6],
                    comment=r[7],
                    mode=r[8],
                    channel=r[9],
                )
                for r in cursor.fetchall()
            ]

    def export_csv(self, path: Path | str, *, force: bool = False) -> int:
        """Write every vote to a CSV file and return the number of rows written.

        Cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
        ``-``, ``@`` or their full-width forms, also after spaces, tabs or invisible
        characters) get a leading apostrophe, since comments come from anyone. The
        file is readable by its owner only (``EXPORT_MODE``), with or without ``force``.

        Args:
            path: The CSV file to write.
            force: Replace ``path`` when it already exists.

        Raises:
            MyoQAError: When ``path`` exists and ``force`` is false, or there is no
                feedback database yet.
        """
        target = Path(path)
        if target.is_dir():
            raise MyoQAError(f"{target} is a folder; give a file name.")
        if target.exists() and not force:
            raise MyoQAError(f"{target} already exists; use --force to replace it.")
        if not self.path.exists():
            raise MyoQAError(
                f"There is no feedback database at {self.path} yet (paths.feedback_db); "
                "it is created when the first vote is stored."
            )
        rows = self.rows()
        target.parent.mkdir(parents=True, exist_ok=True)
        if force:  # a temp file (created 0600) renamed over the target: never half-written
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                os.fchmod(fd, EXPORT_MODE)
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                    _write_csv(handle, rows)
                os.replace(tmp_name, target)
            except BaseException:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
                raise
        else:
            try:  # O_EXCL: fails if the file appeared since the check above; never clobber
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, EXPORT_MODE)
            except FileExistsError as exc:
                raise MyoQAError(f"{target} already exists; use --force to replace it.") from exc
            os.fchmod(fd, EXPORT_MODE)  # whatever the umask
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                _write_csv(handle, rows)
        log.info("Exported %d feedback rows to %s", len(rows), target)
        return len(rows)


def _write_failure(exc: BaseException) -> str:
    """The cause of a failed write in words, without the file's path."""
    text = str(exc).lower()
    errno_ = getattr(exc, "errno", None)
    if "full" in text or errno_ == 28:  # SQLITE_FULL, ENOSPC
        return "the server's disk is full"
    if "readonly" in text or "read-only" in text or errno_ in (13, 30):  # EACCES, EROFS
        return "the feedback database is read-only"
    if "locked" in text or "busy" in text:
        return "the feedback database stayed locked by another writer"
    return "the feedback database could not be written"


def _write_csv(handle: IO[str], rows: Sequence[FeedbackRow]) -> None:
    writer = csv.writer(handle)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(value) for value in _csv_values(row)])


def _csv_values(row: FeedbackRow) -> list[Any]:
    sources = "; ".join(
        f"[{c.get('n', '?')}] {c.get('source_id', '')}"
        for c in row.citations
        if isinstance(c, dict)
    )
    return [
        row.id,
        row.created_at,
        row.app_version,
        row.rating,
        row.comment,
        row.question,
        row.answer,
        sources,
        json.dumps(row.citations, ensure_ascii=False),
        row.mode,
        row.channel,
    ]


def _cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in text cells (CSV injection)."""
    if isinstance(value, str) and _looks_like_formula(value):
        return "'" + value
    return value


def _looks_like_formula(text: str) -> bool:
    if text.startswith(_CONTROL_START):
        return True
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cf", "Zs", "Cc"):
            continue  # spreadsheets skip leading blanks and invisible marks
        return unicodedata.normalize("NFKC", char)[:1] in _FORMULA_START
    return False
