"""The Python SDK's wire types are the server's, field for field: names, docstrings, types,
defaults, constraints and descriptions must be equal, so a change to `schemas/` that the SDK misses fails here.
And the SDK imports nothing of the server's (it ships alone: `pip install ./clients/python`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import msgspec.inspect as mi
import pytest

from darkroom_client import types as client_types
from schemas import api, jobs, library, webhooks

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"

SERVER_MODULES = (api, jobs, library, webhooks)


def shape(info: object, seen: set[str] | None = None) -> object:
    """A type as plain data: names, docstrings, fields, defaults, constraints, descriptions
    (`msgspec.inspect`, since JSON Schema cannot express `dict[str, object]`)."""
    seen = set() if seen is None else seen
    if isinstance(info, mi.StructType):
        name = info.cls.__name__
        if name in seen:
            return ("struct", name)
        seen.add(name)
        config = info.cls.__struct_config__
        return ("struct", name, info.cls.__doc__, config.forbid_unknown_fields, config.frozen, config.omit_defaults,
                tuple((f.name, f.encode_name, f.required, default(f), shape(f.type, seen)) for f in info.fields))
    if isinstance(info, msgspec.Struct):
        return (type(info).__name__, *(shape(getattr(info, name), seen) for name in info.__struct_fields__))
    if isinstance(info, tuple | list | frozenset | set):
        return tuple(sorted((shape(item, seen) for item in info), key=repr))
    if isinstance(info, dict):
        return tuple(sorted((k, shape(v, seen)) for k, v in info.items()))
    return info


def default(field: mi.Field) -> object:
    if field.default_factory is not msgspec.NODEFAULT:
        return msgspec.to_builtins(field.default_factory())
    return None if field.default is msgspec.NODEFAULT else msgspec.to_builtins(field.default)


def server_type(name: str) -> type:
    found = [getattr(module, name) for module in SERVER_MODULES if hasattr(module, name)]
    assert found, f"the SDK has {name}, the server's schemas/ do not"
    return found[0]


@pytest.mark.parametrize("client_type", client_types.WIRE_TYPES, ids=lambda t: t.__name__)
def test_each_sdk_struct_is_the_servers(client_type: type) -> None:
    ours = shape(mi.type_info(client_type))
    theirs = shape(mi.type_info(server_type(client_type.__name__)))
    assert ours == theirs


def test_every_server_body_the_sdk_reads_or_sends_is_mirrored() -> None:
    """The answers of the routes the SDK calls, and everything they contain."""
    names = {t.__name__ for t in client_types.WIRE_TYPES}
    needed = (api.JobRequest, api.JobCreated, api.JobList, api.Gallery, api.Quota, api.ModelList, api.EnrichResponse,
              api.JobCancelAnswer, api.ImageDeleteAnswer, jobs.JobDocument, library.LoraPage, library.LoraInfo,
              library.Session, library.PresetList, library.SessionLora)
    found: set[str] = set()
    for kind in needed:
        shape(mi.type_info(kind), found)
    assert found <= names, f"mirror these in clients/python: {sorted(found - names)}"


def test_the_sdk_imports_no_server_code_and_no_torch() -> None:
    code = ("import sys, darkroom_client; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('schemas', 'services', 'pipelines', 'ops', 'torch', 'diffusers', 'litestar')); print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                            env={"PYTHONPATH": str(CLIENT), "PATH": "/usr/bin:/bin"}, cwd=CLIENT)
    assert result.stdout.strip() == "[]"
