"""`tuwen` command line: serve, ask, batch, check-config, jobs, links, report, backup, health, db copy.

Every command takes `-c PATH`.

It builds what it runs through `service.composition` and imports no adapter itself.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from service import __version__
from service.backup import backup_command
from service.config import DEFAULT_IGNORE, DEFAULT_PROMPT, Config
from service.config_load import load_config
from service.dbcopy import add_db_parser, db_command
from service.errors import ConfigError
from service.events import Source
from service.healthcheck import health_command
from service.logs import setup_logging
from service.messages import msg
from service.users_cli import add_parser as add_users_parser
from service.users_cli import users_command

log = logging.getLogger(f"tuwen.{__name__}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tuwen` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.command == "check-config":
        return _check_config(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 2
    secrets = [config.openai.api_key.get_secret_value(), config.http.api_key.get_secret_value()]
    # Chat bot credentials too: a library's error text (a URL with the Telegram token in it) must not leak.
    secrets += [
        secret.get_secret_value()
        for secret in (
            config.telegram.token,
            config.telegram.webhook_secret,
            config.wecom.secret,
            config.wecom.token,
            config.wecom.encoding_aes_key,
            config.wechat.token,
            *(hook.secret for hook in config.webhook),
        )
    ]
    if database_url := config.storage.database_url.get_secret_value():
        from db.engine import url_secrets  # SQLAlchemy: only when there is a URL (start-up stays quick)

        secrets += url_secrets(database_url)  # the database password
    setup_logging(getattr(args, "log_level", None) or config.logging.level, secrets)
    handlers = {
        "serve": _serve,
        "ask": _ask,
        "batch": _batch,
        "jobs": _jobs,
        "links": _links,
        "report": _report,
        "backup": backup_command,
        "health": health_command,
        "db": db_command,
        "users": users_command,
    }
    handler = handlers[args.command]
    try:
        return int(handler(config, args))
    except KeyboardInterrupt:
        # Ctrl-C before a command had set up its own answer (while starting): one line, no traceback.
        print(f"\n{msg('cli_interrupted')}", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help="config file (default: $TUWEN_CONFIG, then ./config.toml)")
    parser = argparse.ArgumentParser(
        prog="tuwen", description="图问 tuwen — ask a vision-language model about images"
    )
    parser.add_argument("--version", action="version", version=f"tuwen {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", parents=[common], help="run the resident service")
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ask = sub.add_parser("ask", parents=[common], help="answer one image and print the answer")
    ask.add_argument("image")
    ask.add_argument("question", nargs="?")
    ask.add_argument("--json", action="store_true", help="print the whole record as JSON")
    batch = sub.add_parser("batch", parents=[common], help="answer every image in a folder (resumable)")
    batch.add_argument("folder")
    batch.add_argument("--prompt", help="question to ask (default: the first watch's prompt)")
    batch.add_argument("--csv", dest="csv_out", help="write a CSV of the results (UTF-8 with BOM)")
    batch.add_argument("--no-recursive", action="store_true")
    batch.add_argument("--sidecars", action="store_true", help="also write JSON/XMP sidecars next to files")
    sub.add_parser("check-config", parents=[common], help="validate the config file and exit")
    links = sub.add_parser(
        "links", parents=[common], help="print the kiosk and feed URLs (with their tokens)"
    )
    links.add_argument("--base-url", help="how tablets reach this server, e.g. http://192.168.1.20:8080")
    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, or retry failed ones")
    jobs.add_argument("--status", choices=["queued", "running", "done", "failed"])
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--retry", type=int, nargs="+", metavar="ID", help="retry these failed jobs")
    jobs.add_argument("--retry-failed", action="store_true", help="retry every failed job")
    jobs.add_argument("--json", action="store_true")
    report = sub.add_parser(
        "report", parents=[common], help="write summary reports now (Markdown, HTML, CSV, PNG)"
    )
    report.add_argument("--name", help="only this [[report]] (default: all; 'adhoc' when none is configured)")
    report.add_argument("--since", metavar="YYYY-MM-DD", help="first local day (inclusive)")
    report.add_argument("--until", metavar="YYYY-MM-DD", help="last local day (inclusive: the whole day)")
    report.add_argument("--out", metavar="DIR", help="write here instead of data_dir/reports/NAME/DATE")
    backup = sub.add_parser("backup", parents=[common], help="copy the database safely, even while serving")
    backup.add_argument("dest", help="a file, or a folder for a time-stamped tuwen-*.sqlite3")
    sub.add_parser("health", parents=[common], help="ask the running service's /health; exit 0 if healthy")
    add_db_parser(sub, common)
    add_users_parser(sub, common)
    return parser


def _print_config_error(exc: ConfigError) -> None:
    print(str(msg("config_invalid", path=exc.source)), file=sys.stderr)
    for line in exc.lines:
        print(f"  {line}", file=sys.stderr)


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 1
    from service.checks import environment_problems

    problems, notes = environment_problems(config)
    for note in notes:
        print(f"  {note}")
    if problems:
        print(str(msg("check_problems")), file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(str(msg("config_ok", path=args.config or "(resolved)")))
    print(f"  backend={config.model.backend} data_dir={config.storage.data_dir} watches={len(config.watch)}")
    return 0


def _serve(config: Config, args: argparse.Namespace) -> int:
    from service.composition import build_service
    from service.errors import StartupError

    try:
        app = build_service(config)
        return asyncio.run(app.serve_forever())
    except StartupError as exc:
        # One plain paragraph, no traceback; a non-zero exit so systemd or compose restart us once fixed.
        log.error("%s", exc.message)
        return 1


def _one_shot(config: Config) -> Any:
    """The queue and answerer for `ask`/`batch`; None (after printing why) when the database is unusable."""
    from service.composition import build_one_shot
    from service.errors import StartupError

    try:
        return build_one_shot(config)
    except StartupError as exc:
        print(str(exc.message), file=sys.stderr)
        return None


def _ask(config: Config, args: argparse.Namespace) -> int:
    from service.events import Event, Priority
    from service.images import sha256_file
    from service.oneshot import RunAborted

    image = Path(args.image).resolve()
    if not image.is_file():
        print(str(msg("image_unreadable", reason=f"{image}: not found")), file=sys.stderr)
        return 1
    question = args.question or (config.watch[0].prompt if config.watch else DEFAULT_PROMPT)
    run = _one_shot(config)
    if run is None:
        return 1
    st = image.stat()
    finished: list[Any] = []
    try:
        job = run.submit(
            Event(
                source=Source.CLI,
                question=question,
                images=(str(image),),
                priority=Priority.CLI,
                sha256=sha256_file(image),
                file_size=st.st_size,
                file_mtime=st.st_mtime,
            )
        )
        run.start()
        run.wait([job.uid], finished.append)
    except RunAborted as exc:
        print(str(exc.message), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # One line, no traceback: what happened to the question and how to see its answer later.
        key = "cli_ask_interrupted_service" if run.service else "cli_ask_interrupted"
        print(f"\n{msg(key)}", file=sys.stderr)
        return 130
    finally:
        run.close()
    result = finished[0]
    if args.json:
        print(json.dumps(_job_dict(result), ensure_ascii=False, indent=2))
    elif result.status == "done":
        print(result.answer)
    else:
        print(str(msg("cli_job_failed", reason=result.error)), file=sys.stderr)
    return 0 if result.status == "done" else 1


def _batch(config: Config, args: argparse.Namespace) -> int:
    from service.batch import run_batch

    folder = Path(args.folder).resolve()
    prompt = args.prompt or (config.watch[0].prompt if config.watch else DEFAULT_PROMPT)
    run = _one_shot(config)
    if run is None:
        return 1
    try:
        return run_batch(
            run,
            folder,
            prompt,
            recursive=not args.no_recursive,
            ignores=DEFAULT_IGNORE,
            csv_out=Path(args.csv_out) if args.csv_out else None,
            sidecars=args.sidecars,
        )
    except KeyboardInterrupt:  # while queueing, before the progress bar
        print(f"\n{msg('cli_batch_interrupted', done=0, total='?')}", file=sys.stderr)
        return 130
    finally:
        run.close()


def _jobs(config: Config, args: argparse.Namespace) -> int:
    from service.errors import StartupError
    from service.storage import open_store

    try:
        store = open_store(config)  # an unusable database is one plain paragraph, as for serve
    except StartupError as exc:
        print(str(exc.message), file=sys.stderr)
        return 1
    if args.retry or args.retry_failed:
        count = store.retry_failed(args.retry if args.retry else None)
        print(str(msg("cli_requeued", count=count)))
        return 0
    jobs = store.list_jobs(args.status, args.limit)
    if args.json:
        print(json.dumps([_job_dict(j) for j in jobs], ensure_ascii=False, indent=2))
        return 0
    writer = csv.writer(sys.stdout, delimiter="\t")
    writer.writerow(["id", "status", "source", "created", "file/question", "answer/error"])
    for job in jobs:
        subject = job.file_path or job.question
        outcome = (job.answer if job.status == "done" else job.error) or ""
        writer.writerow(
            [
                job.id,
                job.status,
                job.source,
                job.created_at.isoformat(timespec="seconds"),
                subject,
                outcome.replace("\n", " ")[:120],
            ]
        )
    return 0


def _links(config: Config, args: argparse.Namespace) -> int:
    # Printed to stdout for the person setting up a tablet, never logged: the tokens are credentials.
    from service.http.auth import Auth, Scope

    auth = Auth(config.http.api_key.get_secret_value())
    base = (args.base_url or f"http://{config.http.host}:{config.http.port}").rstrip("/")
    pages = (("cli_link_kiosk", "/kiosk", Scope.KIOSK), ("cli_link_feed", "/feed", Scope.FEED))
    for code, path, scope in pages:
        token = auth.token(scope)
        print(f"{msg(code)}: {base}{path}" + (f"?token={token}" if token else ""))
    if not auth.enabled:
        print(str(msg("cli_links_no_key")))
    return 0


def _report(config: Config, args: argparse.Namespace) -> int:
    from service.reports.adhoc import ReportUsageError, run_reports

    try:
        written = run_reports(
            config,
            name=args.name,
            since=args.since,
            until=args.until,
            out_dir=Path(args.out).resolve() if args.out else None,
        )
    except ReportUsageError as exc:
        print(str(exc.message), file=sys.stderr)
        return 2
    for report, files in written:
        print(str(msg("report_written", name=report.name)))
        for path in files.paths:
            print(f"  {path}")
    return 0


def _job_dict(job: Any) -> dict[str, Any]:
    fields = [
        "id",
        "uid",
        "status",
        "source",
        "source_ref",
        "file_path",
        "question",
        "answer",
        "answer_kind",
        "finish_reason",
        "ocr_text",
        "error",
        "error_code",
        "backend",
        "model",
        "model_version",
        "sha256",
        "width",
        "height",
        "pages",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "attempts",
        "duplicate_of",
    ]
    data = {name: getattr(job, name) for name in fields}
    data["created_at"] = job.created_at.isoformat()
    data["finished_at"] = job.finished_at.isoformat() if job.finished_at else None
    return data


if __name__ == "__main__":
    sys.exit(main())
