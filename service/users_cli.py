"""`tuwen users add|list|passwd|remove`: staff accounts, run on the server against the service's database.

A password comes from a prompt (typed twice, not echoed) or, with `--password-stdin`, the first line of
standard input (for scripts and provisioning); never from the command line, where `ps` and shell history
would show it. Every change is written to the audit log as `cli:<os user>`. The running service notices a
first account within `auth.ACCOUNTS_RECHECK_SECONDS`; a changed password, role or a removal ends that
account's sessions at once (`db/users.py`).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from db.audit import Action, AuditLog
from db.store import Store
from db.users import AccountError, UserStore
from service import passwords
from service.config import Config
from service.messages import msg

ROLES = ("admin", "reviewer", "viewer")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `tuwen users …` on the CLI's subparsers."""
    users = sub.add_parser("users", parents=[common], help="staff accounts: add, list, passwd, remove")
    actions = users.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", parents=[common], help="add an account")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    actions.add_parser("list", parents=[common], help="list the accounts")
    passwd = actions.add_parser("passwd", parents=[common], help="set an account's password (and role)")
    passwd.add_argument("name")
    passwd.add_argument("--role", choices=ROLES, help="also change the role")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    remove = actions.add_parser("remove", parents=[common], help="remove an account")
    remove.add_argument("name")


def users_command(config: Config, args: argparse.Namespace) -> int:
    """Run one `tuwen users` action; 0 on success, 1 when refused (the reason on stderr)."""
    store = Store(config.db_path)
    store.migrate()
    users, audit = UserStore(store), AuditLog(store)
    actor = f"cli:{_os_user()}"
    try:
        if args.users_command == "list":
            return _list(users, config)
        if args.users_command == "remove":
            ended = users.remove(args.name)
            audit.record(actor, Action.USER_REMOVE, args.name, {"sessions_ended": ended})
            print(str(msg("cli_user_removed", name=args.name, sessions=ended)))
            return 0
        password = _read_password(args.name, stdin=args.password_stdin)
        if password is None:
            return 1
        if args.users_command == "add":
            user = users.add(args.name, args.role, passwords.hash_password(password))
            audit.record(actor, Action.USER_ADD, user.name, {"role": user.role})
            print(str(msg("cli_user_added", name=user.name, role=user.role)))
            return 0
        ended = users.set_password(args.name, passwords.hash_password(password))
        audit.record(actor, Action.USER_PASSWORD, args.name, {"sessions_ended": ended})
        print(str(msg("cli_user_password_set", name=args.name, sessions=ended)))
        if args.role:
            ended = users.set_role(args.name, args.role)
            audit.record(actor, Action.USER_ROLE, args.name, {"role": args.role})
            print(str(msg("cli_user_role_set", name=args.name, role=args.role, sessions=ended)))
        return 0
    except AccountError as exc:
        print(str(_account_message(exc)), file=sys.stderr)
        return 1
    finally:
        store.close()


def _list(users: UserStore, config: Config) -> int:
    accounts = users.all()
    if not accounts:
        print(str(msg("cli_users_none")))
        if not config.http.api_key.get_secret_value():
            print(str(msg("cli_users_open")))
        return 0
    print("name\trole\tcreated\tlast_login")
    for user in accounts:
        last = user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "-"
        print(f"{user.name}\t{user.role}\t{user.created_at.isoformat(timespec='seconds')}\t{last}")
    return 0


def _read_password(name: str, *, stdin: bool) -> str | None:
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print(str(msg("cli_password_empty_stdin")), file=sys.stderr)
            return None
    else:
        password = getpass.getpass(str(msg("cli_password_prompt", name=name)))
        if getpass.getpass(str(msg("cli_password_again"))) != password:
            print(str(msg("cli_password_mismatch")), file=sys.stderr)
            return None
    try:
        passwords.check_new_password(password)
    except passwords.PasswordRefused as exc:
        code = "password_short" if exc.reason == "short" else "password_long"
        print(str(msg(code, min=passwords.MIN_LENGTH, max=passwords.MAX_LENGTH)), file=sys.stderr)
        return None
    return password


def _account_message(exc: AccountError) -> Any:
    if exc.reason == "role":
        return msg("account_bad_role", role=exc.name)
    return msg(f"account_{'bad_name' if exc.reason == 'name' else exc.reason}", name=exc.name)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container running as an arbitrary uid)
        return "?"
