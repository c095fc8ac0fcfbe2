"""The store on a real PostgreSQL server (tests/pg.py): migrations, claims from two nodes at once, folded
search, NUL in text, wake-ups across stores, origin nodes, dead nodes' claims, and a server that stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect, text

from db.history import search_jobs
from db.models import JobStatus
from db.store import Store
from service.errors import StorageUnavailable
from service.events import Event, Priority
from service.nodes import NodeHeartbeat, requeue_orphans
from service.queue import JobQueue
from tests.pg import Cluster


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    opened = Store(pg_url)
    opened.migrate()
    yield opened
    opened.close()


def submit(store: Store, n: int, *, priority: int = Priority.BACKLOG, origin: str | None = None) -> list[int]:
    queue = JobQueue(store)
    queue.origin_node = origin
    source = "api" if priority <= Priority.INTERACTIVE else "watch"
    return [
        queue.submit(
            Event(source=source, question=f"问题 {i}", images=(f"/scans/{i}.png",), priority=priority)
        ).id
        for i in range(n)
    ]


def test_migrations_run_on_postgresql_to_the_newest_revision(store: Store) -> None:
    with store.engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        indexes = {
            row[0] for row in conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename='jobs'"))
        }
        trgm = conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname='pg_trgm'")).scalar()
    assert revision == "0008"
    assert {"ix_jobs_search_trgm", "ix_jobs_claim"} <= indexes
    assert trgm == 1
    assert {"jobs", "files", "nodes", "sessions"} <= set(inspect(store.engine).get_table_names())
    store.migrate()  # a second node starting finds it done


def test_migrations_on_postgresql_build_the_schema_the_models_describe(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base, include_object

    def not_the_trigram_index(obj: object, name: str | None, type_: str, *rest: object) -> bool:
        # The GIN trigram index is PostgreSQL's own (migration 0004); the models describe the columns.
        return name != "ix_jobs_search_trgm" and include_object(obj, name, type_, *rest)  # type: ignore[arg-type]

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": not_the_trigram_index})
        assert compare_metadata(context, Base.metadata) == []


def test_two_nodes_claiming_at_once_take_each_job_once(pg_url: str, store: Store) -> None:
    ids = submit(store, 200)
    other = Store(pg_url)
    other.running_claims()  # both connected before they race
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def drain(name: str, claimer: Store) -> None:
        start.wait()
        while jobs := claimer.claim(2, node=name):
            claimed[name] += [job.id for job in jobs]

    threads = [threading.Thread(target=drain, args=(n, s)) for n, s in (("a", store), ("b", other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    other.close()
    both = claimed["a"] + claimed["b"]
    assert sorted(both) == ids  # every job once, none twice
    assert claimed["a"] and claimed["b"]
    with store.read_session() as session:
        nodes = dict(session.execute(text("SELECT id, node FROM jobs")).all())
    assert all(nodes[i] == "a" for i in claimed["a"]) and all(nodes[i] == "b" for i in claimed["b"])


def test_claim_keeps_priorities_and_answers_interactive_jobs_alone(store: Store) -> None:
    backlog = submit(store, 4)
    cli = submit(store, 2, priority=Priority.CLI)
    asked = submit(store, 2, priority=Priority.INTERACTIVE)
    assert [j.id for j in store.claim(8, node="n")] == asked[:1]
    assert [j.id for j in store.claim(8, node="n")] == asked[1:]
    assert [j.id for j in store.claim(8, node="n")] == cli
    jobs = store.claim(8, node="n", priorities=(Priority.CLI, Priority.BACKLOG))
    assert [j.id for j in jobs] == backlog
    assert {(j.status, j.node, j.attempts) for j in jobs} == {(JobStatus.RUNNING, "n", 1)}


def test_an_interactive_job_is_claimed_only_by_the_node_that_received_it(store: Store) -> None:
    asked = submit(store, 1, priority=Priority.INTERACTIVE, origin="hall")
    backlog = submit(store, 1, origin="hall")  # backlog jobs carry no origin: anyone may take them
    assert [j.id for j in store.claim(1, node="office")] == backlog
    assert store.claim(1, node="office") == []
    assert [j.id for j in store.claim(1, node="hall")] == asked


def test_a_late_answer_from_a_node_taken_for_dead_is_discarded(store: Store) -> None:
    (job_id,) = submit(store, 1)
    (stale,) = store.claim(1, node="dead")
    assert requeue_orphans(store, lease_seconds=30, own_node="alive") == 1
    assert requeue_orphans(store, lease_seconds=30, own_node="other") == 0  # already given back
    (fresh,) = store.claim(1, node="alive")
    late = store.finish(job_id, claim=(stale.node, stale.attempts), status=JobStatus.DONE, answer="迟到")
    assert (late.status, late.node) == (JobStatus.RUNNING, "alive")
    done = store.finish(job_id, claim=(fresh.node, fresh.attempts), status=JobStatus.DONE, answer="准时")
    assert (done.status, done.answer) == (JobStatus.DONE, "准时")


def test_the_heartbeat_requeues_the_claims_of_a_node_whose_lease_ran_out(store: Store) -> None:
    (job_id,) = submit(store, 1)
    dead = NodeHeartbeat(store, "dead", "ocr", interval=60)
    dead.register()
    store.claim(1, node="dead")
    alive = NodeHeartbeat(store, "alive", "ocr", interval=0.2, lease_seconds=0.5)
    alive.register()
    alive.start()
    try:
        deadline = time.monotonic() + 10
        while store.get(job_id).status != JobStatus.QUEUED and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.1)
    finally:
        alive.stop()
    assert store.get(job_id).status == JobStatus.QUEUED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("written", "query"),
    [
        ("清代佈告一張", "布告"),
        ("臺北縣政府公文", "县政府"),
        ("县政府", "縣政府"),
        ("编号ＡＢＣ１２３", "abc123"),
        ("一只鼎", "鼎"),
        ("合影留念", "合影"),
    ],
)
def test_search_on_postgresql_finds_folded_text(store: Store, written: str, query: str) -> None:
    (hit, miss) = submit(store, 2)
    store.claim(2)
    store.finish(hit, status=JobStatus.DONE, answer=written)
    store.finish(miss, status=JobStatus.DONE, answer="无关的答案")
    assert [job.id for job in search_jobs(store, q=query).items] == [hit]


def test_search_terms_are_text_not_syntax_on_postgresql(store: Store) -> None:
    (hit,) = submit(store, 1)
    store.claim(1)
    store.finish(hit, status=JobStatus.DONE, answer="100% 纯棉_布")
    assert [job.id for job in search_jobs(store, q="100%").items] == [hit]
    assert search_jobs(store, q="1_0%").items == []


def test_nul_in_text_is_stored_on_postgresql(store: Store) -> None:
    job = JobQueue(store).submit(Event(source="api", question="看\x00图", images=("/tmp/a\x00.png",)))
    store.claim(1)
    store.finish(job.id, status=JobStatus.DONE, answer="答\x00案")
    kept = store.get(job.id)
    assert kept is not None and (kept.question, kept.answer) == ("看\ufffd图", "答\ufffd案")
    assert [j.id for j in search_jobs(store, q="答").items] == [job.id]


def test_work_submitted_by_one_store_wakes_another(pg_url: str, store: Store) -> None:
    other = Store(pg_url)
    try:
        before = other.data_version()
        submit(store, 1)
        deadline = time.monotonic() + 5
        while other.data_version() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert other.data_version() != before
        assert other._listener is not None and other._listener.listening
    finally:
        other.close()


def test_a_stopped_server_is_storage_unavailable_not_a_traceback(pg_cluster: Cluster, store: Store) -> None:
    submit(store, 1)
    pg_cluster.stop()
    try:
        with pytest.raises(StorageUnavailable) as caught:
            store.claim(1, node="n")
        assert caught.value.kind == "unreachable"
        assert "127.0.0.1" in str(caught.value.message) and "数据库" in str(caught.value.message)
        assert not store.health.available
    finally:
        pg_cluster.start()
    assert [job.status for job in store.claim(1, node="n")] == [JobStatus.RUNNING]
    assert store.health.available


def test_the_password_never_shows_in_what_the_store_says() -> None:
    from db.engine import url_secrets

    target = "postgresql+psycopg://tuwen:s3cr%40t@db.example:5432/tuwen"
    shown = Store(target).shown
    assert "s3cr" not in shown and "db.example" in shown
    assert {"s3cr@t", "s3cr%40t"} <= set(url_secrets(target))


def test_without_a_listening_connection_an_idle_worker_looks_at_the_queue_every_second() -> None:
    from db.notify import FALLBACK_POLL_SECONDS, ChangeListener

    listener = ChangeListener(
        ([], {"host": "127.0.0.1", "port": 1, "user": "postgres", "connect_timeout": 2}), "x"
    )
    listener.start()  # the connection is refused: polling instead
    try:
        first = listener.version()
        time.sleep(FALLBACK_POLL_SECONDS * 1.5)
        assert not listener.listening and listener.version() != first
    finally:
        listener.stop()
