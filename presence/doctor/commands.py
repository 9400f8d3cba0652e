"""The Redis commands presence sends: the one list an ACL user needs.

Each is named as an ACL rule names it (``xadd``, ``script|load``), with a
sample call over presence's own key and channel names, so that ``ACL DRYRUN``
checks the user's key and channel patterns as well as the command. Commands
the Lua scripts call are listed too: Redis checks them against the caller's
ACL when the script runs, not when ``EVALSHA`` is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import CONSUMER_GROUP, Keys


@dataclass(frozen=True, slots=True)
class Command:
    """A command presence sends, as an ACL rule names it, and a call of it."""

    rule: str
    #: The call, with ``{placeholders}`` for the key and channel names.
    sample: str

    @property
    def name(self) -> str:
        """As the README writes it: ``SCRIPT LOAD``."""
        return self.rule.replace("|", " ").upper()

    def call(self, keys: Keys, db: int = 0) -> list[str]:
        """The sample with presence's names under ``keys``'s namespace."""
        room = keys.room("r")
        names = {
            "heartbeat": keys.heartbeat,
            "presence": keys.presence,
            "online": keys.online("c"),
            "deadlines": keys.deadlines,
            "servers": keys.servers,
            "holders": keys.holders("c"),
            "last_seen": keys.last_seen,
            "rooms_due": keys.rooms_due,
            "room_presence": room.presence,
            "room_data": room.data,
            "shards": f"{keys.namespace}shards",
            "group": CONSUMER_GROUP,
            "channel": f"__keyevent@{db}__:del",
            "db": str(db),
        }
        return self.sample.format(**names).split()


def _commands(*pairs: tuple[str, str]) -> tuple[Command, ...]:
    return tuple(Command(rule, sample) for rule, sample in pairs)


#: Sent by the servers (and by ``presence status`` and ``watch``).
SERVERS = _commands(
    ("ping", "PING"),
    ("info", "INFO server"),
    ("time", "TIME"),
    ("xadd", "XADD {heartbeat} * client c server s"),
    ("xgroup|create", "XGROUP CREATE {heartbeat} {group} $ MKSTREAM"),
    ("xreadgroup", "XREADGROUP GROUP {group} s COUNT 1 STREAMS {heartbeat} >"),
    ("xack", "XACK {heartbeat} {group} 0-1"),
    ("xinfo|stream", "XINFO STREAM {room_presence}"),
    ("xread", "XREAD COUNT 1 STREAMS {presence} 0-0"),
    ("xrevrange", "XREVRANGE {presence} + - COUNT 1"),
    ("xrange", "XRANGE {presence} - + COUNT 1"),
    ("xlen", "XLEN {presence}"),
    ("hget", "HGET {servers} c"),
    ("hgetall", "HGETALL {servers}"),
    ("zscan", "ZSCAN {deadlines} 0"),
    ("zcard", "ZCARD {deadlines}"),
    ("evalsha", "EVALSHA 0000000000000000000000000000000000000000 1 {heartbeat}"),
    ("script|load", "SCRIPT LOAD return"),
    ("subscribe", "SUBSCRIBE {channel}"),
)

#: Called by the Lua scripts, and a few by the servers too (``ZSCORE`` of
#: last seen, ``SET``/``GET`` of the shard count, ``ZADD`` of the webhook marker).
SCRIPTS = _commands(
    ("set", "SET {online} s PX 1000"),
    ("get", "GET {shards}"),
    ("exists", "EXISTS {online}"),
    ("del", "DEL {online}"),
    ("pttl", "PTTL {online}"),
    ("pexpire", "PEXPIRE {holders} 1000"),
    ("pexpireat", "PEXPIREAT {online} 1"),
    ("persist", "PERSIST {room_presence}"),
    ("zadd", "ZADD {deadlines} GT 1 c"),
    ("zscore", "ZSCORE {last_seen} c"),
    ("zrem", "ZREM {rooms_due} r"),
    ("zrange", "ZRANGE {deadlines} 0 0"),
    ("zrangebyscore", "ZRANGEBYSCORE {rooms_due} -inf +inf LIMIT 0 1"),
    ("zrevrangebyscore", "ZREVRANGEBYSCORE {holders} +inf -inf"),
    ("zremrangebyscore", "ZREMRANGEBYSCORE {last_seen} -inf 0"),
    ("hset", "HSET {servers} c s"),
    ("hmget", "HMGET {room_data} c"),
    ("hdel", "HDEL {servers} c"),
    ("type", "TYPE {online}"),
    ("xtrim", "XTRIM {heartbeat} MINID ~ 0"),
    ("xpending", "XPENDING {heartbeat} {group} IDLE 1 - + 1"),
    ("xclaim", "XCLAIM {heartbeat} {group} s 0 0-1"),
    ("xinfo|groups", "XINFO GROUPS {heartbeat}"),
    ("xinfo|consumers", "XINFO CONSUMERS {heartbeat} {group}"),
    ("xgroup|delconsumer", "XGROUP DELCONSUMER {heartbeat} {group} s"),
)

#: Needed only while ``notify-keyspace-events`` lacks what presence needs:
#: the servers then add it themselves.
CONFIG = _commands(
    ("config|get", "CONFIG GET notify-keyspace-events"),
    ("config|set", "CONFIG SET notify-keyspace-events Eg"),
)

#: On a Redis Cluster: redis-py's cluster client maps the slots, and learns
#: which arguments are keys, with these.
CLUSTER = _commands(
    ("cluster|slots", "CLUSTER SLOTS"),
    ("command", "COMMAND"),
)

#: When the URL names a database other than 0.
SELECT = Command("select", "SELECT {db}")

#: Every command presence needs on one Redis with database 0.
NEEDED = SERVERS + SCRIPTS + CONFIG
