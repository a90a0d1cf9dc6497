"""The AMQP contract as an AsyncAPI 3 document, generated from `schemas/`: the events exchange
(topic, one routing key per event), the commands exchange, every payload's JSON Schema, and an
example of each. Committed as schemas/asyncapi.json (a test fails when it drifts), served at
/asyncapi.json; `darkroom schema --asyncapi` prints it."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec

from schemas import topology as t
from schemas.events import EVENT_TYPES, TRANSIENT_EVENTS, AnyCommand, AnyEvent, Command, Event

AMQP_BINDING = "0.3.0"
REF = "#/components/schemas/{name}"
# Values the examples use for fields of these names (the rest follow from the field's type).
EXAMPLE_VALUES: dict[str, Any] = {
    "job_id": "0b5e3c1e-9d7a-4c52-8f0e-5a1d2c3b4a69",
    "event_id": "6f1c2d3e-4b5a-4c69-8d7e-1f2a3b4c5d6e",
    "command_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "webhook_id": "6f1c2d3e-4b5a-4c69-8d7e-1f2a3b4c5d6e",
    "image_id": "0b5e3c1e-9d7a-4c52-8f0e-5a1d2c3b4a69_1",
    "id": "0b5e3c1e-9d7a-4c52-8f0e-5a1d2c3b4a69",
    "prompt": "a red fox in the snow",
    "original_prompt": "a red fox in the snow",
    "model": "tiny-sd",
    "model_id": "tiny-sd",
    "worker": "gpu-1/4242",
    "reason": "the model ran out of memory",
    "error": "answered HTTP 500",
    "url": "https://example.com/hooks/darkroom",
    "file_path": "2025/01/31/0b5e3c1e-9d7a-4c52-8f0e-5a1d2c3b4a69_1.png",
    "for_event": t.JOB_COMPLETED,
    "status": "completed",
}
EXAMPLE_TIME = "2025-01-31T12:00:00Z"
# Optional fields every example shows anyway: the envelope.
ENVELOPE = ("event_id", "occurred_at", "command_id", "issued_at")


def _tag(cls: type) -> str:
    return cls.__struct_config__.tag  # type: ignore[attr-defined]


def _example(schema: dict, components: dict, name: str = "") -> Any:
    if "$ref" in schema:
        return _example(components[schema["$ref"].rsplit("/", 1)[1]], components, name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return _example(options[0], components, name) if options else None
    if name in EXAMPLE_VALUES and schema.get("type") == "string":
        return EXAMPLE_VALUES[name]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        if not properties:
            return {}
        required = set(schema.get("required", ()))
        return {key: _example(sub, components, key) for key, sub in properties.items()
                if key in required or key in ENVELOPE}
    if kind == "array":
        return [_example(schema.get("items", {}), components, name)]
    if kind == "string":
        if schema.get("format") == "date-time" or name.endswith("_at"):
            return EXAMPLE_TIME
        if schema.get("contentEncoding") == "base64":
            return ""
        return name or "string"
    if kind == "integer":
        return max(1, schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    return None


def _describe(cls: type) -> str:
    return inspect.cleandoc(cls.__doc__ or "")


def asyncapi_document(namespace: str = "darkroom") -> dict:
    topo = t.Topology(namespace)
    (_,), components = msgspec.json.schema_components([AnyEvent | AnyCommand], ref_template=REF)
    exchanges = {
        "events": {"name": topo.events, "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"},
        "commands": {"name": topo.commands, "type": "direct", "durable": True, "autoDelete": False, "vhost": "/"},
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    command_types: tuple[type[Command], ...] = AnyCommand.__args__  # type: ignore[attr-defined]
    for cls in (*EVENT_TYPES, *command_types):
        name, key = cls.__name__, _tag(cls)
        is_event = issubclass(cls, Event)
        exchange = exchanges["events" if is_event else "commands"]
        example = _example({"$ref": REF.format(name=name)}, components)
        msgspec.json.decode(msgspec.json.encode(example), type=cls)  # the example must be a valid message
        messages[name] = {
            "name": name,
            "title": name,
            "summary": _describe(cls).split("\n\n")[0].replace("\n", " "),
            "description": _describe(cls),
            "contentType": "application/json",
            "payload": {"$ref": REF.format(name=name)},
            "headers": {"type": "object", "properties": {
                "message_id": {"type": "string", "description": "the event_id / command_id"},
                "type": {"type": "string", "const": key, "description": "the routing key"},
            }},
            "bindings": {"amqp": {
                "messageType": key,
                "deliveryMode": 1 if cls in TRANSIENT_EVENTS else 2,
                "bindingVersion": AMQP_BINDING,
            }},
            "examples": [{"name": key, "payload": example}],
        }
        stages = t.consumers_of(key, t.EVENTS if is_event else t.COMMANDS)
        channels[key] = {
            "address": key,
            "title": f"{exchange['name']} / {key}",
            "description": (f"Routing key `{key}` on the {exchange['type']} exchange `{exchange['name']}`. "
                            + (f"Darkroom's own queues bound to it: {', '.join(topo.queue(s) for s in stages)}. "
                               if stages else "")
                            + (f"Under affinity routing (DARKROOM_ROUTING=affinity, the default) it is sent with "
                               f"`{key}.<model>` instead, to that model's own queue `{topo.queue('generator')}.<model>` "
                               "(in <model> any character but letters, digits, `.`, `_` and `-` is `:` and its UTF-8 bytes in hex). "
                               if key == t.GENERATE_IMAGES else "")
                            + ("Transient (not persisted, may be dropped)." if cls in TRANSIENT_EVENTS else
                               "Persistent, published with confirms.")),
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING}},
        }
        operations[f"{'receive' if is_event else 'send'}{name}"] = {
            "action": "receive" if is_event else "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": (f"Bind your own queue to `{exchange['name']}` with routing key `{key}` (or a pattern "
                        "such as `job.*` or `#`) to receive it." if is_event else
                        f"Sent to `{exchange['name']}` for its one consuming queue; not for subscribers."),
            "messages": [{"$ref": f"#/channels/{key}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Darkroom events",
            "version": "1",
            "description": (
                "Darkroom publishes every event, a past-tense fact, to one durable topic exchange "
                f"(`{topo.events}` with the default namespace; `<DARKROOM_NAMESPACE>.events` in general) "
                "with the event's `type` as routing key. Any AMQP 0-9-1 client may declare its own queue, "
                "bind it with routing keys or topic patterns (`job.*`, `job.#`, `#`) and consume. Events "
                "only gain fields with defaults: ignore fields you do not know. Image bytes travel only in "
                "`image.generated` (base64 `png`)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "The installation's broker (`darkroom run` writes a private one's URL to "
                               "var/rabbitmq/url).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": components},
    }
