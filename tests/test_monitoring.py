"""The monitoring files under deploy/: the alerting rules checked and unit-tested
by promtool, the Grafana dashboard well formed, and every metric either one
uses found on a live server's ``/metrics``.

A dashboard or a rule naming a metric that does not exist shows nothing and
never fires, silently; the live server is the only proof that it does exist.
Its webhook, room and client make the labelled and optional families appear.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from .servers import Spawn
from .support import RedisServer, Serve, StartRedis, metric, open_events, poll

T = TypeVar("T")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "presence-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "presence-rules.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "presence-dashboard.json"
DOCS = DEPLOY.parent / "docs" / "monitoring.md"

#: Series Prometheus makes itself, on no target's /metrics.
PROMETHEUS_OWN = frozenset({"up"})

#: PromQL's functions and aggregation operators: a name followed by "(".
FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
    changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month
    day_of_week day_of_year days_in_month deg delta deriv exp floor
    histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta
    increase irate label_join label_replace last_over_time ln log10 log2
    mad_over_time max_over_time min_over_time minute month pi predict_linear
    present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh
    sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year
    avg bottomk count count_values group limit_ratio limitk max min quantile
    stddev stdvar sum topk start end
    """.split()  # noqa: SIM905 (a list literal of 90 names, one a line, reads worse)
)
#: Words of PromQL that are no metric: modifiers, set operators, numbers.
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "atan2", "inf", "nan"}
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# Not after a word character (5m, 1e3), a "$" (Grafana's $job) or a dot (1.5).
_NAME = re.compile(r"(?<![\w$.:])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (Grafana variables allowed) reads."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)  # label matchers, and ${variables}
    text = _RANGE.sub("[]", text)  # ranges, subqueries, $__rate_interval
    text = _LABEL_LIST.sub(" ", text)  # by (instance): labels, not metrics
    names: set[str] = set()
    for found in _NAME.finditer(text):
        word, call = found[1], found[2]
        if word.lower() in KEYWORDS:  # "and (": an operator before parentheses
            continue
        if call:
            assert word in FUNCTIONS, f"{word}() is no PromQL function, in {expr!r}"
        else:
            names.add(word)
    return names


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("needs promtool (apt-get install prometheus; .ci/run installs it)")
    return found


def run_promtool(*args: str) -> str:
    done = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return found


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = dashboard()["panels"]
    return found


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def variable_queries() -> list[str]:
    """The metrics the dashboard's variables list their values from."""
    return [
        found[1]
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
        and (found := re.match(r"label_values\((\w+)", variable["definition"]))
    ]


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'sum by (job) (rate(a_total{x="y(z)", job=~"$job"}[$__rate_interval])) '
        "> 1.1 * ignoring(instance) group_left(status) b:recorded offset 5m"
    ) == {"a_total", "b:recorded"}
    assert metric_names("max(c_seconds - d_seconds) > bool 1e3 and on () (vector(1))") == {
        "c_seconds",
        "d_seconds",
    }
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(e_bucket[5m])))") == {
        "e_bucket"
    }
    with pytest.raises(AssertionError, match="no PromQL function"):
        metric_names("rates(f_total[5m])")


def test_rules_pass_promtool_check() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", str(RULES))


def test_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) == len({a["alert"] for a in alerts})
    for alert in alerts:
        assert alert.get("for"), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]
    cases = [
        check
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for check in test.get("alert_rule_test", [])
    ]
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    names = {a["alert"] for a in alerts}
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    documented = DOCS.read_text()
    assert [n for n in sorted(names) if f"**{n}.**" not in documented] == []


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert metric_names(target["expr"]), target["expr"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each one, its Grafana variables given values."""
    values = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
    recorded = []
    for i, expr in enumerate(dashboard_expressions()):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        recorded.append({"record": f"dashboard:expression_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    assert f"SUCCESS: {len(recorded)} rules found" in run_promtool("check", "rules", str(path))


async def test_every_metric_used_is_on_a_live_server(
    spawn: Spawn, redis_server: RedisServer, serve: Serve
) -> None:
    posted: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        posted.append(await request.read())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", receive)
    receiver = await serve(app)
    server = spawn(
        "--redis-url", redis_server.url,
        "--server-id", "monitored",
        "--heartbeat-interval", "0.5",
        "--webhook-url", str(receiver.make_url("/hook")),
    )  # fmt: skip
    await server.wait_healthy()
    async with aiohttp.ClientSession() as session:
        stream = await open_events(session, f"{server.url}/clients/alice/events?room=lobby")
        try:
            await stream.next()
            await poll(lambda: _webhook_posted(posted), what="the webhook's first post")
            async with session.get(f"{server.url}/metrics") as response:
                assert response.status == 200
                exposed = await response.text()
        finally:
            stream.close()
    # By sample name, as PromQL sees them: a counter's ends in _total, a
    # histogram's in _bucket, _sum and _count.
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(exposed)
        for sample in family.samples
    }
    used = {name for expr in dashboard_expressions() for name in metric_names(expr)}
    used |= {name for rule in rules() for name in metric_names(rule["expr"])}
    used |= set(variable_queries())
    missing = sorted(used - PROMETHEUS_OWN - set(samples))
    assert missing == [], f"used but not on /metrics: {missing}"
    documented = DOCS.read_text()
    undocumented = sorted(name for name in samples if f"| `{name}` |" not in documented)
    assert undocumented == [], f"not in the table of {DOCS.name}: {undocumented}"
    # The settings the rules compare lags with, and the health gauges.
    assert samples["presence_heartbeat_interval_seconds"] == 0.5
    assert samples["presence_heartbeat_ttl_seconds"] == 0.75
    assert samples["presence_workers"] > 0
    assert samples["presence_workers_failing"] == 0
    assert samples["presence_redis_unreachable"] == 0
    assert samples["presence_heartbeats_pending_overdue"] == 0


async def test_health_gauges_follow_a_redis_outage(spawn: Spawn, start_redis: StartRedis) -> None:
    redis_server = start_redis()
    server = spawn(
        "--redis-url", redis_server.url,
        "--server-id", "monitored",
        "--heartbeat-interval", "0.5",
    )  # fmt: skip
    await server.wait_healthy()
    async with aiohttp.ClientSession() as session:

        async def gauges() -> tuple[float, float]:
            unreachable = await metric(session, server.url, "presence_redis_unreachable")
            failing = await metric(session, server.url, "presence_workers_failing")
            return unreachable, failing

        assert await gauges() == (0, 0)
        redis_server.stop()
        await poll(
            lambda: _is(gauges(), lambda g: g[0] == 1 and g[1] > 0),
            timeout=10,
            what="the outage on /metrics",
        )
        redis_server.start()  # the same port
        await poll(lambda: _is(gauges(), lambda g: g == (0, 0)), timeout=10, what="recovered")
        assert await metric(session, server.url, "presence_redis_outages_total") == 1
        assert await metric(session, server.url, "presence_redis_reconnects_total") > 0


async def _is(value: Awaitable[T], check: Callable[[T], bool]) -> bool:
    return check(await value)


async def _webhook_posted(posted: list[bytes]) -> bool:
    return bool(posted)
