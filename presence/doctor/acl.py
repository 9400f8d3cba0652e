"""Whether presence's Redis user may run every command presence sends.

``ACL DRYRUN <user> <command> <args...>`` (Redis 7) answers for each
command, on presence's own key and channel names, without running it. A
user that may not run DRYRUN (it is an admin command), or a Redis 6.2 that
has none, is asked the same another way: the commands are queued in a
``MULTI`` and discarded, and Redis checks each one's ACL as it queues it.
A denied command is then written to ``ACL LOG``, as any refusal is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from redis.exceptions import NoPermissionError, ResponseError

from ..entries import text
from ..redis_client import Redis
from ..sentinel_url import is_sentinel_url, parse_sentinel_url
from .commands import CLUSTER, CONFIG, NEEDED, SELECT, Command
from .report import OK, PROBLEM, WARN, Check
from .target import Target

Kind = Literal["command", "key", "channel"]


class Unverifiable(Exception):
    """This user cannot have its permissions checked here; the message says why."""


class NoUser(Exception):
    """Redis has no ACL user of this name."""


def needed(target: Target) -> tuple[Command, ...]:
    """What this deployment's user must be allowed."""
    commands = NEEDED
    if target.db:
        commands += (SELECT,)
    if target.cluster is not None:
        commands += CLUSTER
    return commands


async def acl(target: Target, user: str | None = None) -> Check:
    """``user`` (default: the URL's own, ``ACL WHOAMI``) against ``needed``."""
    commands = needed(target)
    keys = target.shards[0].keys
    calls = [c.call(keys, target.db) for c in commands]
    denied: dict[tuple[Command, Kind], list[str]] = {}
    names: set[str] = set()
    how = "ACL DRYRUN"
    for node in target.primaries():
        name = user or await _whoami(target, node) or _url_user(target)
        try:
            found = await _dryrun(target, node, name, calls)
            if found is None and (user is not None or target.cluster is not None):
                raise Unverifiable("it may not run ACL DRYRUN (or WHOAMI), or Redis has none (6.2)")
            if found is None:
                # The URL's own user, on one Redis: queued in a MULTI and discarded.
                found, how = await _queued(target.redis, calls), "MULTI, then DISCARD"
        except Unverifiable as exc:
            return _unverifiable(name, str(exc))
        except NoUser as exc:
            return Check("acl", PROBLEM, str(exc), _new_user(name, commands, target))
        names.add(name)
        for command, reason in zip(commands, found, strict=True):
            if reason is not None:
                denied.setdefault((command, _kind(reason)), []).append(node)
    who = ", ".join(sorted(names))
    required = {d: nodes for d, nodes in denied.items() if d[0] not in CONFIG}
    if required:
        nodes = sorted({n for found in required.values() for n in found})
        denials = "; ".join(_denials(list(required), target))
        return Check(
            "acl",
            PROBLEM,
            f"user {who} {denials}{target.where(nodes)} ({how})",
            f"ACL SETUSER {who} {' '.join(_rules(list(required), target))} "
            "(and the same in the ACL file)",
        )
    config = (
        "; CONFIG GET/SET refused, needed only while notify-keyspace-events lacks Eg "
        "(see keyspace-events)"
        if denied
        else ""
    )
    return Check(
        "acl",
        OK,
        f"user {who} may run the {len(commands) - len(denied)} commands presence sends "
        f"({how}){config}",
    )


def _unverifiable(user: str, why: str) -> Check:
    return Check(
        "acl",
        WARN,
        f"the permissions of user {user} cannot be checked: {why}",
        f"run the doctor with an admin's --redis-url and --acl-user {user}, or "
        f"ACL GETUSER {user} against the commands in docs/doctor.md",
    )


def _url_user(target: Target) -> str:
    """The user the URL names (ACL WHOAMI refused): ``default`` when none."""
    url = target.settings.redis_url
    if is_sentinel_url(url):
        return parse_sentinel_url(url).username or "default"
    return unquote(urlsplit(url).username or "") or "default"


async def _whoami(target: Target, node: str) -> str | None:
    try:
        return text(await target.on(node, "ACL", "WHOAMI"))
    except ResponseError:
        return None


async def _dryrun(
    target: Target, node: str, user: str, calls: list[list[str]]
) -> list[str | None] | None:
    """Each call's denial, or None where allowed; None when DRYRUN is not
    there (Redis 6.2) or not this user's to run. ``NoUser`` for a user that
    does not exist."""
    try:
        await target.on(node, "ACL", "DRYRUN", user, "PING")
    except ResponseError as exc:
        if "not found" in str(exc):
            raise NoUser(f"Redis has no ACL user {user}{target.where([node])}") from None
        return None
    replies = []
    for call in calls:
        try:
            reply = text(await target.on(node, "ACL", "DRYRUN", user, *call))
        except ResponseError as exc:
            reply = str(exc)
        replies.append(None if reply == "OK" else reply)
    return replies


async def _queued(redis: Redis, calls: list[list[str]]) -> list[str | None]:
    """Each call's denial as Redis answers it when queued in a MULTI, which
    is then discarded: nothing runs."""
    # One connection, read raw: the client's reply parsers expect results, not QUEUED.
    pool: Any = redis.connection_pool
    connection: Any = await pool.get_connection()
    try:
        try:
            await _send(connection, "MULTI")
        except ResponseError as exc:
            raise Unverifiable(f"it may run neither ACL DRYRUN nor MULTI ({exc})") from None
        replies: list[str | None] = []
        try:
            for call in calls:
                try:
                    await _send(connection, *call)
                    replies.append(None)
                except NoPermissionError as exc:
                    replies.append(str(exc))
                except ResponseError:
                    replies.append(None)  # refused after the ACL let it through
        finally:
            await _send(connection, "DISCARD")
    finally:
        await pool.release(connection)
    return replies


async def _send(connection: Any, *args: str) -> Any:
    await connection.send_command(*args)
    return await connection.read_response()


def _kind(reason: str) -> Kind:
    """What a refusal is about: the command itself, or the names it was given."""
    about = reason.lower()
    if "to run the" in about:
        return "command"
    return "channel" if "channel" in about else "key"


def _denials(denied: Sequence[tuple[Command, Kind]], target: Target) -> list[str]:
    said = []
    if run := [c.name for c, kind in denied if kind == "command"]:
        said.append(f"may not run {', '.join(run)}")
    if keyed := [c.name for c, kind in denied if kind == "key"]:
        space = f" under {target.settings.namespace!r}" if target.settings.namespace else ""
        said.append(f"may not touch presence's keys{space} ({', '.join(keyed)})")
    if any(kind == "channel" for _, kind in denied):
        said.append(f"may not subscribe to __keyevent@{target.db}__:del")
    return said


def _rules(denied: Sequence[tuple[Command, Kind]], target: Target) -> list[str]:
    rules = [f"+{c.rule}" for c, kind in denied if kind == "command"]
    if any(kind == "key" for _, kind in denied):
        rules.append(f"~{target.settings.namespace}*")
    if any(kind == "channel" for _, kind in denied):
        rules.append(f"&__keyevent@{target.db}__:del")
    return rules


def _new_user(name: str, commands: Sequence[Command], target: Target) -> str:
    rules = " ".join(f"+{c.rule}" for c in commands)
    return (
        f"ACL SETUSER {name} on ><password> ~{target.settings.namespace}* "
        f"&__keyevent@{target.db}__:del {rules}"
    )
