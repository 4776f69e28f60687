"""A bounded load test of the chat's JSON API, on loopback only.

N client threads share M questions and stop at a fixed time limit. Each client
posts ``/api/ask`` and, for every answered question, a vote to ``/api/feedback``;
it sends its own ``X-Forwarded-For`` address so the server's per-client rate limit
sees N clients (the server trusts that header from 127.0.0.1 by default). The
report gives throughput, latency percentiles and status counts, and checks that
every accepted vote is a row in the feedback database.

Run against a running server::

    python -m evals.loadtest --url http://127.0.0.1:7860 --feedback-db data/feedback.sqlite3

or let it start the server in-process on a free port with a throw-away feedback
database (the real chain from the current settings)::

    python -m evals.loadtest --serve --clients 20 --total 300 --time-limit 120
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import httpx

from indexer.errors import MyoQAError

log = logging.getLogger(__name__)

#: Upper bounds that keep a run a test, not an attack.
MAX_CLIENTS = 64
MAX_TOTAL = 10_000
MAX_TIME_LIMIT_S = 1800.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

FALLBACK_QUESTIONS = (
    "Which antibody goes with rapidly progressive ILD in dermatomyositis?",
    "How is inclusion body myositis managed?",
    "What were the main results of the ProDERM trial of IVIG?",
    "Which patients need enhanced cancer screening under the IMACS guideline?",
)


@dataclass
class LoadResult:
    """What a run measured.

    Attributes:
        status_counts: HTTP status of every ``/api/ask`` call.
        feedback_status_counts: HTTP status of every ``/api/feedback`` call.
        errors: Transport errors (timeouts, refused connections), as text.
        latencies_s: Seconds per ``/api/ask`` call that got a response.
        feedback_rows: Rows added to the feedback database (None when not checked).
    """

    clients: int
    planned: int
    time_limit_s: float
    duration_s: float = 0.0
    status_counts: Counter[int] = field(default_factory=Counter)
    feedback_status_counts: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    feedback_rows: int | None = None
    stopped_by_time_limit: bool = False

    @property
    def asked(self) -> int:
        return sum(self.status_counts.values())

    @property
    def answered(self) -> int:
        return self.status_counts.get(200, 0)

    @property
    def feedback_accepted(self) -> int:
        return self.feedback_status_counts.get(201, 0)

    @property
    def server_errors(self) -> int:
        return sum(
            n
            for counts in (self.status_counts, self.feedback_status_counts)
            for status, n in counts.items()
            if status >= 500
        )

    @property
    def unexpected_statuses(self) -> dict[int, int]:
        allowed_ask, allowed_feedback = {200, 429}, {201, 429}
        out: Counter[int] = Counter()
        for status, n in self.status_counts.items():
            if status not in allowed_ask:
                out[status] += n
        for status, n in self.feedback_status_counts.items():
            if status not in allowed_feedback:
                out[status] += n
        return dict(out)

    @property
    def throughput_per_s(self) -> float:
        """Answered questions (200) per second of wall time."""
        return self.answered / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        """Latency percentile (nearest rank), seconds."""
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    @property
    def feedback_complete(self) -> bool | None:
        if self.feedback_rows is None:
            return None
        return self.feedback_rows == self.feedback_accepted

    @property
    def ok(self) -> bool:
        """Every request answered or refused with 429, no transport errors, no lost vote."""
        return (
            not self.errors and not self.unexpected_statuses and self.feedback_complete is not False
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status_counts"] = {str(k): v for k, v in sorted(self.status_counts.items())}
        data["feedback_status_counts"] = {
            str(k): v for k, v in sorted(self.feedback_status_counts.items())
        }
        del data["latencies_s"]
        data.update(
            asked=self.asked,
            answered=self.answered,
            feedback_accepted=self.feedback_accepted,
            server_errors=self.server_errors,
            throughput_per_s=round(self.throughput_per_s, 2),
            p50_s=_round(self.percentile(50)),
            p95_s=_round(self.percentile(95)),
            max_s=_round(max(self.latencies_s) if self.latencies_s else None),
            feedback_complete=self.feedback_complete,
            ok=self.ok,
        )
        return data

    def summary(self) -> str:
        p50, p95 = self.percentile(50), self.percentile(95)
        lines = [
            f"{self.clients} clients, {self.asked}/{self.planned} questions in {self.duration_s:.1f} s"
            + (" (stopped by the time limit)" if self.stopped_by_time_limit else ""),
            f"throughput {self.throughput_per_s:.1f} answers/s; latency p50 "
            f"{_ms(p50)}, p95 {_ms(p95)}",
            f"/api/ask statuses {dict(sorted(self.status_counts.items()))}; "
            f"/api/feedback statuses {dict(sorted(self.feedback_status_counts.items()))}",
        ]
        if self.feedback_rows is not None:
            lines.append(
                f"feedback rows added {self.feedback_rows}, votes accepted {self.feedback_accepted}"
            )
        if self.errors:
            lines.append(f"{len(self.errors)} transport errors, first: {self.errors[0]}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def check_loopback(url: str) -> None:
    """Refuse to load-test anything but this machine."""
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        raise MyoQAError(f"The load test only runs against loopback (127.0.0.1), not {host!r}.")


def count_feedback_rows(db: Path) -> int:
    """Rows in a feedback database (0 when it does not exist yet)."""
    if not db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])
        except sqlite3.OperationalError:  # the table is created with the first vote
            return 0


def run_load(
    base_url: str,
    questions: Sequence[str],
    *,
    clients: int = 20,
    total: int = 300,
    time_limit_s: float = 120.0,
    feedback: bool = True,
    feedback_db: Path | None = None,
    request_timeout_s: float = 60.0,
) -> LoadResult:
    """Send ``total`` questions from ``clients`` concurrent clients, stopping at the time limit.

    Args:
        base_url: The chat server, e.g. ``http://127.0.0.1:7860`` (loopback only).
        questions: Cycled through until ``total`` have been asked.
        clients: Concurrent clients, each with its own ``X-Forwarded-For`` address.
        total: Questions to ask in all.
        time_limit_s: No request starts after this; running ones are cut at it.
        feedback: Post a vote for every answered question.
        feedback_db: The server's feedback database, to check that no vote was lost.
        request_timeout_s: Per-request timeout (also bounded by the time limit).
    """
    check_loopback(base_url)
    if not questions:
        raise MyoQAError("The load test needs at least one question.")
    if not 1 <= clients <= MAX_CLIENTS:
        raise MyoQAError(f"clients must be between 1 and {MAX_CLIENTS}.")
    if not 1 <= total <= MAX_TOTAL:
        raise MyoQAError(f"total must be between 1 and {MAX_TOTAL}.")
    if not 0 < time_limit_s <= MAX_TIME_LIMIT_S:
        raise MyoQAError(f"time_limit_s must be between 0 and {MAX_TIME_LIMIT_S:.0f}.")

    result = LoadResult(clients=clients, planned=total, time_limit_s=time_limit_s)
    rows_before = count_feedback_rows(feedback_db) if feedback_db is not None else None
    lock = threading.Lock()
    next_index = iter(range(total))
    started = time.perf_counter()
    deadline = started + time_limit_s

    def take() -> int | None:
        with lock:
            if time.perf_counter() >= deadline:
                result.stopped_by_time_limit = True
                return None
            return next(next_index, None)

    def client(number: int) -> None:
        headers = {"X-Forwarded-For": f"10.77.{number // 250}.{number % 250 + 1}"}
        with httpx.Client(base_url=base_url, headers=headers) as http:
            while (index := take()) is not None:
                question = questions[index % len(questions)]
                timeout = max(0.1, min(request_timeout_s, deadline - time.perf_counter()))
                t0 = time.perf_counter()
                try:
                    response = http.post("/api/ask", json={"question": question}, timeout=timeout)
                except httpx.HTTPError as exc:
                    with lock:
                        result.errors.append(f"/api/ask {type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    result.status_counts[response.status_code] += 1
                    result.latencies_s.append(elapsed)
                if not feedback or response.status_code != 200:
                    continue
                answer = response.json()
                vote = {
                    "question": question,
                    "answer": answer["answer"],
                    "citations": answer["citations"],
                    "rating": "up" if index % 2 == 0 else "down",
                    "comment": f"load test vote {index}",
                }
                timeout = max(0.1, min(request_timeout_s, deadline - time.perf_counter()))
                try:
                    voted = http.post("/api/feedback", json=vote, timeout=timeout)
                except httpx.HTTPError as exc:
                    with lock:
                        result.errors.append(f"/api/feedback {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    result.feedback_status_counts[voted.status_code] += 1

    threads = [
        threading.Thread(target=client, args=(n,), name=f"load-client-{n}", daemon=True)
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.perf_counter()) + request_timeout_s)
    result.duration_s = time.perf_counter() - started
    if any(thread.is_alive() for thread in threads):
        result.errors.append("some clients were still running after the time limit")
    if feedback_db is not None and rows_before is not None:
        result.feedback_rows = count_feedback_rows(feedback_db) - rows_before
    log.info("Load test finished:\n%s", result.summary())
    return result


def read_questions(path: Path | None) -> list[str]:
    """Questions from a JSONL file (field ``question``), or a few built-in ones."""
    if path is None:
        return list(FALLBACK_QUESTIONS)
    from evals.questions_io import load_questions

    return [q.question for q in load_questions(path)]


@contextmanager
def served_chain(rate_limit_per_minute: int | None = None) -> Iterator[tuple[str, Path]]:
    """Serve the real chain (current settings) on a free loopback port with a temp feedback DB."""
    from app.web.server import background_server, build_server
    from indexer.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="myoqa-load-") as tmp:
        db = Path(tmp) / "feedback.sqlite3"
        base = load_settings()
        data = base.model_dump()
        data["paths"]["feedback_db"] = db
        data["server"]["host"] = "127.0.0.1"
        if rate_limit_per_minute is not None:
            data["server"]["rate_limit_per_minute"] = rate_limit_per_minute
        settings = load_settings(**data)
        app, managed = build_server(settings)
        managed.load()
        managed.get()  # fail now, with the loader's message, if the index is missing
        with background_server(app, settings) as url:
            yield url, db


@click.command()
@click.option("--url", help="A running server on loopback, e.g. http://127.0.0.1:7860.")
@click.option("--serve", is_flag=True, help="Start the real chain in-process on a free port.")
@click.option(
    "--questions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL question file (field 'question'); default: a few built-in questions.",
)
@click.option("--clients", default=20, show_default=True, help="Concurrent clients.")
@click.option("--total", default=300, show_default=True, help="Questions in all.")
@click.option("--time-limit", default=120.0, show_default=True, help="Seconds before stopping.")
@click.option("--rate-limit", type=int, help="With --serve: requests per client per minute.")
@click.option(
    "--feedback-db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --url: the server's feedback database, to check that every vote was stored.",
)
@click.option("--no-feedback", is_flag=True, help="Do not post votes.")
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the result as JSON.",
)
def main(
    url: str | None,
    serve: bool,
    questions: Path | None,
    clients: int,
    total: int,
    time_limit: float,
    rate_limit: int | None,
    feedback_db: Path | None,
    no_feedback: bool,
    json_out: Path | None,
) -> None:
    """Bounded loopback load test of /api/ask and /api/feedback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (url is None) == (not serve):
        raise click.UsageError("Give exactly one of --url or --serve.")
    try:
        texts = read_questions(questions)
        if serve:
            with served_chain(rate_limit) as (served_url, db):
                result = run_load(
                    served_url,
                    texts,
                    clients=clients,
                    total=total,
                    time_limit_s=time_limit,
                    feedback=not no_feedback,
                    feedback_db=db,
                )
        else:
            assert url is not None
            result = run_load(
                url,
                texts,
                clients=clients,
                total=total,
                time_limit_s=time_limit,
                feedback=not no_feedback,
                feedback_db=feedback_db,
            )
    except MyoQAError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(result.summary())
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    if not result.ok:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
