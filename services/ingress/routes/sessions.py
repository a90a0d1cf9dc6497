"""/v1/sessions/{id}: a key's sessions (spaces): defaults and LoRAs that jobs naming them use."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from schemas.library import Session, SessionBody, SessionLora
from services.ingress.domain import sessions
from services.ingress.routes.common import Caller, CatalogDep, LayoutDep, errors
from services.ingress.routes.library import LAYER_EXAMPLE, json_body


class SessionRoutes(Controller):
    path = "/v1/sessions"
    tags = ["sessions"]

    @get("/{session_id:str}", summary="A session", responses=errors(404))
    async def read(self, principal: Caller, layout: LayoutDep, session_id: FromPath[str]) -> Session:
        """Another key's session is a 404, like a missing one."""
        return await sessions.get_session(session_id, principal, layout=layout)

    @put("/{session_id:str}", summary="Create or replace a session",
         responses={201: ResponseSpec(data_container=Session, description="Created")} | errors(400, 409, 413))
    async def put(self, principal: Caller, layout: LayoutDep, catalog: CatalogDep, session_id: FromPath[str],
                  data: Annotated[SessionBody, json_body("a session's defaults", LAYER_EXAMPLE)]) -> Response[Session]:
        """Its model, settings, LoRAs, style, negative prompt and preset fill what a job naming
        it (`"session": "<id>"`) leaves out. 201 when created, 200 when replaced."""
        session, created = await sessions.put_session(session_id, data, principal, layout=layout, catalog=catalog)
        return Response(session, status_code=201 if created else 200)

    @delete("/{session_id:str}", status_code=204, summary="Delete a session", responses=errors(404))
    async def remove(self, principal: Caller, layout: LayoutDep, session_id: FromPath[str]) -> None:
        await sessions.delete_session(session_id, principal, layout=layout)

    @post("/{session_id:str}/loras", status_code=200, summary="Add a LoRA to a session", responses=errors(400, 404))
    async def add_lora(self, principal: Caller, layout: LayoutDep, session_id: FromPath[str],
                       data: Annotated[SessionLora, json_body("add a LoRA", {"name": "fox_style", "weight": 0.8})],
                       ) -> Session:
        """A LoRA already in the session gets the new weight."""
        return await sessions.add_lora(session_id, data, principal, layout=layout)

    @delete("/{session_id:str}/loras/{name:str}", status_code=200, summary="Remove a LoRA from a session",
            responses=errors(404))
    async def remove_lora(self, principal: Caller, layout: LayoutDep, session_id: FromPath[str],
                          name: FromPath[str]) -> Session:
        return await sessions.remove_lora(session_id, name, principal, layout=layout)

    @delete("/{session_id:str}/loras", status_code=200, summary="Remove every LoRA from a session",
            responses=errors(404))
    async def clear_loras(self, principal: Caller, layout: LayoutDep, session_id: FromPath[str]) -> Session:
        return await sessions.clear_loras(session_id, principal, layout=layout)
