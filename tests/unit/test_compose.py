"""compose.yaml's cluster profile holds together (there is no Docker daemon here to run it)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from schemas.settings import broker_urls

ROOT = Path(__file__).resolve().parents[2]


def test_the_cluster_profile_names_the_same_three_nodes_everywhere():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    nodes = {name: service for name, service in compose["services"].items() if name.startswith("rabbitmq")}
    hosts = sorted(service["hostname"] for service in nodes.values())
    assert hosts == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    # Peer discovery lists exactly those nodes, and the joining nodes mount it.
    config = (ROOT / "ops" / "rabbitmq-cluster.conf").read_text()
    assert sorted(re.findall(r"classic_config\.nodes\.\d+ = rabbit@(\S+)", config)) == hosts
    for name in ("rabbitmq-2", "rabbitmq-3"):
        assert nodes[name]["profiles"] == ["cluster"]
        assert any(volume.startswith("./ops/rabbitmq-cluster.conf:/etc/rabbitmq/conf.d/") for volume in nodes[name]["volumes"])
    # One cookie for all.
    assert len({service["environment"]["RABBITMQ_ERLANG_COOKIE"] for service in nodes.values()}) == 1
    # The documented command gives the services all three nodes, in a form they accept.
    [recipe] = re.findall(r"DARKROOM_COMPOSE_AMQP_URL=(\S+)", (ROOT / "compose.yaml").read_text())
    assert sorted(urlsplit(url).hostname for url in broker_urls(recipe)) == hosts
    generator = compose["services"]["generator"]
    assert generator["environment"]["DARKROOM_AMQP_URL"].startswith("${DARKROOM_COMPOSE_AMQP_URL:-amqp://")
    assert {"rabbitmq-2", "rabbitmq-3"} <= set(generator["depends_on"])
