"""The `darkroom` command line."""

from __future__ import annotations

import argparse
import sys

from schemas.settings import Settings, SettingsError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from ops.run import run
    from services import logs

    settings = _settings()
    logs.configure(settings, "supervisor")
    return run(settings)


def cmd_broker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ops.cluster import serve

    base = Path(args.dir) if args.dir else _settings().data_path / "rabbitmq-cluster"
    return serve(base, args.nodes, args.port)


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from schemas.asyncapi import asyncapi_document
    from schemas.events import event_schema

    print(json.dumps(asyncapi_document() if args.asyncapi else event_schema(), indent=2, sort_keys=True))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import asyncio
    import os
    from pathlib import Path

    from ops.bench.runner import CASES, DEFAULT_CASES, run_cases

    names = args.cases or [name for name in CASES if name in DEFAULT_CASES]
    asyncio.run(run_cases(
        names, quick=args.quick, results_dir=Path(args.results),
        amqp_url=os.environ.get("DARKROOM_BENCH_AMQP_URL"), device_name=args.device, model=args.model,
    ))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from ops import deadletters
    from schemas.topology import Topology

    settings = _settings()
    url = deadletters.amqp_url(settings)
    topology = Topology(settings.namespace)
    if args.action == "list":
        deadletters.run_list(url, topology, args.json)
    else:
        deadletters.run_replay(url, topology, args.ids, args.all)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    import asyncio

    from ops import deadletters, events
    from schemas.topology import Topology
    from services.bus import BrokerUnavailable

    settings = _settings()
    url = deadletters.amqp_url(settings)
    try:
        asyncio.run(events.tail(url, Topology(settings.namespace), pattern=args.type, job=args.job,
                                as_json=args.json, count=args.count))
    except KeyboardInterrupt:
        pass
    except BrokerUnavailable as exc:
        print(f"darkroom events: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from ops import keys

    state = _settings().data_path / "state"
    if args.keys_command == "create":
        key, token = keys.create(state, args.name, admin=args.admin, rate=args.rate,
                                 daily_images=args.daily_images, queued_jobs=args.queued_jobs)
        print(f"created {'admin ' if key.admin else ''}key {key.id} for {key.name!r}. The token, shown only now:")
        print(token)
        print(f"webhook signing secret (also `darkroom keys show {key.id}`): {key.webhook_secret}")
    elif args.keys_command == "show":
        key = keys.show(state, args.id)
        print(keys.describe(key))
        print(f"webhook signing secret: {key.webhook_secret}")
    elif args.keys_command == "list":
        listed = keys.load_all(state)
        print("\n".join(keys.describe(k) for k in listed) if listed else "no keys yet: `darkroom keys create --name ...`")
    elif args.keys_command == "revoke":
        print(f"revoked {keys.describe(keys.revoke(state, args.id))}")
    else:
        key = keys.update(state, args.id, rate=args.rate, daily_images=args.daily_images, queued_jobs=args.queued_jobs)
        print(f"updated {keys.describe(key)}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ops.workers import run_worker

    run_worker(args.broker, args.ingress, args.token, args.models, args.namespace, args.broker_ca)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    from ops import workers

    action = args.workers_command or "list"
    if action == "list":
        return workers.print_live(args.url, args.api_key, as_json=args.json)
    settings = _settings()
    if action == "add":
        record, command = workers.add(settings, args.name, rabbitmq_dir=args.rabbitmq_dir, ingress_url=args.ingress,
                                      broker_host=args.broker_host)
        print(f"created worker {record.name!r}: key {record.key_id}"
              + (f", RabbitMQ user {record.broker_user!r} (permissions: {settings.namespace}.* only)"
                 if record.broker_user else " (no RabbitMQ user: the broker is not the private one; create one "
                                            "there with configure/write/read on "
                                            f"'{workers.permissions(settings.namespace)[0]}')"))
        print("Run this on the worker host (the token" + (" and password are" if record.broker_user else " is")
              + " shown only now):")
        print(command)
    elif action == "revoke":
        record = workers.revoke(settings, args.name, rabbitmq_dir=args.rabbitmq_dir)
        print(f"revoked worker {record.name!r} (key {record.key_id}"
              + (f", RabbitMQ user {record.broker_user!r} deleted)" if record.broker_user else ")"))
    else:
        listed = workers.load_all(settings.data_path / "state")
        for r in listed:
            state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
            print(f"{r.name:20}  key {r.key_id}  {r.broker_user or '-':32}  {state}")
        if not listed:
            print("no worker credentials yet: `darkroom workers add NAME`")
    return 0


def cmd_analytics(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ops import analytics
    from services.readside import queries

    settings = _settings()
    try:
        if args.ops_command == "stats":
            found = analytics.stats(settings)
            print(analytics.to_json(found) if args.json else analytics.render_stats(found))
        elif args.ops_command == "query":
            found = analytics.query(settings, args.sql, args.max_rows)
            if args.json:
                print(analytics.to_json([dict(zip(found["columns"], row, strict=True)) for row in found["rows"]]))
            else:
                print(analytics.render_table(found["columns"], found["rows"]))
            if found["truncated"]:
                print(f"(only the first {args.max_rows} rows; raise --max-rows)", file=sys.stderr)
        elif args.ops_command == "rebuild":
            found = analytics.rebuild(settings)
            print(f"rebuilt the projection from {found['events']} events in {found['seconds']} s")
        else:
            for path in analytics.export(settings, Path(args.parquet)):
                print(path)
    except (analytics.OpsError, queries.NotReadOnly) as exc:
        print(f"darkroom ops {args.ops_command}: {exc}", file=sys.stderr)
        return 1
    return 0




def cmd_models(args: argparse.Namespace) -> int:
    import asyncio

    from ops import models

    settings = _settings()
    if args.models_command == "pull":
        from schemas.events import PullModel

        command = PullModel(source=args.source, name=args.name, kind=args.kind, revision=args.revision,
                            sha256=args.sha256, allow_pickle=args.allow_pickle, config=args.config, requested_by="cli")
        return asyncio.run(models.pull(settings, command, wait=not args.detach))
    if args.models_command == "remove":
        return asyncio.run(models.remove(settings, args.name, args.kind, args.wait))
    if args.models_command == "show":
        return models.show(settings, args.name)
    return models.list_models(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkroom", description="Self-hosted image generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start RabbitMQ (unless DARKROOM_AMQP_URL is set), every service and the API")
    run.set_defaults(func=cmd_run)
    broker = sub.add_parser("broker", help="RabbitMQ on this machine")
    broker_sub = broker.add_subparsers(dest="broker_command", required=True)
    cluster = broker_sub.add_parser("cluster", help="run a RabbitMQ cluster of several nodes here (quorum queues "
                                                    "replicated on each) until Ctrl-C; prints DARKROOM_AMQP_URL")
    cluster.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    cluster.add_argument("--port", type=int, default=0,
                         help="AMQP port of node 1; node n listens on PORT+n-1 (default: free ports)")
    cluster.add_argument("--dir", help="the nodes' folder (default: <data dir>/rabbitmq-cluster)")
    cluster.set_defaults(func=cmd_broker)
    bench = sub.add_parser("bench", help="measure Darkroom against its baselines (default: every case)")
    bench.add_argument("cases", nargs="*", help="case names (overhead, saturation, memory, ingress, broker, ...)")
    bench.add_argument("--quick", action="store_true", help="small counts: keeps the harness working in the test suite")
    bench.add_argument("--results", default="bench/results", help="folder for <timestamp>.json")
    bench.add_argument("--device", default="cpu", help="where the generator and the bare loop run: cpu or cuda")
    bench.add_argument("--model", default="tiny", choices=("tiny", "sd15-random"),
                       help="tiny (64 px, 4 steps) or sd15-random (SD 1.5's architecture, random weights, 512 px, 25 steps)")
    bench.set_defaults(func=cmd_bench)
    keys = sub.add_parser("keys", help="create, list, revoke and update API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    for name in ("create", "update"):
        command = keys_sub.add_parser(name, help=f"{name} a key")
        if name == "create":
            command.add_argument("--name", required=True, help="who or what uses the key")
            command.add_argument("--admin", action="store_true", help="sees and manages every tenant's jobs")
        else:
            command.add_argument("id", help="the key's id (see `darkroom keys list`)")
        command.add_argument("--rate", help='generation requests per period, e.g. "100/hour" ("default" to reset)')
        command.add_argument("--daily-images", type=int, help="images per UTC day (-1: back to the default)")
        command.add_argument("--queued-jobs", type=int, help="pending + processing jobs at once (-1: default)")
        command.set_defaults(func=cmd_keys)
    keys_sub.add_parser("list", help="list keys (never their tokens)").set_defaults(func=cmd_keys)
    show = keys_sub.add_parser("show", help="a key and its webhook signing secret (whsec_...)")
    show.add_argument("id")
    show.set_defaults(func=cmd_keys)
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_keys)
    ops = sub.add_parser("ops", help="operate a running installation")
    ops_sub = ops.add_subparsers(dest="ops_command", required=True)
    dead = ops_sub.add_parser("dead-letters", help="list or replay messages that could not be processed")
    dead.add_argument("action", choices=("list", "replay"))
    dead.add_argument("ids", nargs="*", help="message ids to replay")
    dead.add_argument("--all", action="store_true", help="replay every dead letter")
    dead.add_argument("--json", action="store_true", help="list as JSON")
    dead.set_defaults(func=cmd_dead_letters)
    stats = ops_sub.add_parser("stats", help="queue statistics from the DuckDB projection")
    stats.add_argument("--json", action="store_true", help="as JSON")
    stats.set_defaults(func=cmd_analytics)
    query = ops_sub.add_parser("query", help="run read-only SQL (SELECT) on the projection: tables jobs, images")
    query.add_argument("sql", help='e.g. "SELECT model, count(*) FROM jobs GROUP BY ALL"')
    query.add_argument("--json", action="store_true", help="rows as JSON objects instead of a table")
    query.add_argument("--max-rows", type=int, default=1000, help="at most this many rows (default 1000, max 10000)")
    query.set_defaults(func=cmd_analytics)
    rebuild = ops_sub.add_parser("rebuild", help="rebuild the projection from the event log")
    rebuild.set_defaults(func=cmd_analytics)
    export = ops_sub.add_parser("export", help="export the projection's tables as Parquet files")
    export.add_argument("--parquet", required=True, metavar="DIR", help="folder for jobs.parquet and images.parquet")
    export.set_defaults(func=cmd_analytics)
    events = sub.add_parser("events", help="follow events live")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    tail = events_sub.add_parser("tail", help="print events as they are published")
    tail.add_argument("--type", default="#", help="routing key or pattern, e.g. 'job.*' (default: every event)")
    tail.add_argument("--job", help="only this job's events")
    tail.add_argument("--json", action="store_true", help="each event as one JSON line")
    tail.add_argument("--count", type=int, help="stop after this many events")
    tail.set_defaults(func=cmd_events)
    models = sub.add_parser("models", help="pull, list, show and remove models and LoRAs while running")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="download, verify and add a model or LoRA (progress shown)")
    pull.add_argument("source", help="a Hugging Face repo id (org/name), an http(s) URL, or a local path")
    pull.add_argument("--name", help="its id in the catalog (default: from the source)")
    pull.add_argument("--kind", choices=("checkpoint", "lora"), default="checkpoint")
    pull.add_argument("--revision", help="Hub branch, tag or commit (default: main)")
    pull.add_argument("--sha256", help="expected sha256 of a single-file source (URL or file)")
    pull.add_argument("--config", help="single-file checkpoints: a catalog model id or diffusers folder with the "
                                       "matching configs (default: the default model)")
    pull.add_argument("--allow-pickle", action="store_true",
                      help="accept pickled .ckpt/.bin/.pt weights (loading them can run code)")
    pull.add_argument("--detach", action="store_true", help="send the pull and return without following it")
    pull.set_defaults(func=cmd_models)
    models_sub.add_parser("list", help="models in the catalog and pulled LoRAs").set_defaults(func=cmd_models)
    show = models_sub.add_parser("show", help="a model's catalog entry and pulled files (with sha256) as JSON")
    show.add_argument("name")
    show.set_defaults(func=cmd_models)
    remove = models_sub.add_parser("remove", help="remove a pulled model or LoRA (refused while jobs use it)")
    remove.add_argument("name")
    remove.add_argument("--kind", choices=("checkpoint", "lora"), default="checkpoint")
    remove.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long for the jobs that use it to end")
    remove.set_defaults(func=cmd_models)
    worker = sub.add_parser("worker", help="run a generator on this host for a Darkroom elsewhere (shares only the broker)")
    worker.add_argument("--broker", help="AMQP URL with this worker's user (DARKROOM_AMQP_URL); amqps:// for TLS "
                        "(see --broker-ca); a cluster's nodes comma-separated")
    worker.add_argument("--ingress", help="the control node's API, for model and LoRA files (DARKROOM_INGRESS_URL)")
    worker.add_argument("--token", help="the worker key from `darkroom workers add` (DARKROOM_WORKER_TOKEN)")
    worker.add_argument("--models", help="this worker's own folder: its models/, fetched models and LoRAs (DARKROOM_DATA_DIR)")
    worker.add_argument("--namespace", help="the installation's namespace if not `darkroom` (DARKROOM_NAMESPACE)")
    worker.add_argument("--broker-ca", help="with amqps://: the CA file the broker's certificate is checked against "
                                            "(DARKROOM_BROKER_CA; client certificate: DARKROOM_BROKER_CERT/_KEY)")
    worker.set_defaults(func=cmd_worker)
    workers = sub.add_parser("workers", help="list generator workers (admin), add or revoke worker credentials")
    workers.add_argument("--url", help="the API (default: DARKROOM_URL, then the client config)")
    workers.add_argument("--api-key", help="an admin key (default: DARKROOM_API_KEY, then the client config)")
    workers.add_argument("--json", action="store_true", help="list as JSON")
    workers.set_defaults(func=cmd_workers, workers_command=None)
    workers_sub = workers.add_subparsers(dest="workers_command")
    add = workers_sub.add_parser("add", help="a credential for a worker host; prints the command to run there")
    add.add_argument("name", help="the worker's name: lowercase letters, digits, dashes")
    add.add_argument("--ingress", help="the API URL as the worker host reaches it (default: from DARKROOM_HOST/PORT)")
    add.add_argument("--broker-host", help="the broker's address as the worker host reaches it "
                                           "(default: DARKROOM_BROKER_HOST, or this host's name)")
    add.add_argument("--rabbitmq-dir", help="the private broker's folder (default: <data dir>/rabbitmq)")
    add.set_defaults(func=cmd_workers)
    revoke_worker = workers_sub.add_parser("revoke", help="revoke a worker's key and delete its RabbitMQ user")
    revoke_worker.add_argument("name")
    revoke_worker.add_argument("--rabbitmq-dir", help="the private broker's folder (default: <data dir>/rabbitmq)")
    revoke_worker.set_defaults(func=cmd_workers)
    workers_sub.add_parser("credentials", help="the worker credentials made here").set_defaults(func=cmd_workers)
    workers_sub.add_parser("list", help="workers heard from (the default)").set_defaults(func=cmd_workers)
    schema = sub.add_parser("schema", help="print the JSON Schema of every event and command")
    schema.add_argument("--asyncapi", action="store_true", help="the AsyncAPI 3 document of the AMQP contract instead")
    schema.set_defaults(func=cmd_schema)
    from ops.client_cli import add_client_commands  # generate, jobs, gallery, cancel, loras, quota, mcp

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
