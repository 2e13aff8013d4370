"""Routes for the mirrored objects: `GET /{resource}` lists and `GET /{resource}/{id}` reads.

Generated from `services.objects.RESOURCES`, so every resource has the same list envelope,
pagination, filter validation and tenant scoping, and its own typed OpenAPI. (No postponed
annotations here: FastAPI must see the generated parameter models as real types.)
"""

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from plooto_api.api.auth import authorize, bearer_token, require_scope
from plooto_api.api.errors import ApiError
from plooto_api.api.lists import as_utc
from plooto_api.services import objects as object_service
from plooto_api.services.refresh import RefreshFailed, not_refreshable, refresh_object, refreshable
from plooto_api.services.tokens import Principal
from plooto_api.store.pagination import DEFAULT_LIMIT, MAX_LIMIT, InvalidCursor, PageRequest

router = APIRouter()


class ListParams(BaseModel):
    """Pagination shared by every list."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Page size, 1 to 100.")
    cursor: str | None = Field(None, max_length=500, description="`next_cursor` of the previous page.")

    @field_validator("*", mode="after")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("timestamps need a time zone, e.g. 2026-11-27T14:00:00Z")
            return as_utc(value)  # ValueError (a 400 naming the filter) for a time with no UTC time
        return value


def _title(path: str) -> str:
    return "".join(part.title() for part in path.split("_"))


def _add_resource(resource: object_service.Resource) -> None:
    name = _title(resource.path)
    fields: dict[str, Any] = {
        f.param: (
            object_service.filter_type(resource, f) | None,
            Field(None, description=f.description or f.param),
        )
        for f in resource.filters
    }
    params_model: Any = create_model(f"{name}ListParams", __base__=ListParams, **fields)
    list_kind: Any = Literal["list"]
    list_model: Any = create_model(
        f"{name}List",
        object=(list_kind, "list"),
        data=(list[resource.schema], ...),  # type: ignore[name-defined]
        has_more=(bool, ...),
        next_cursor=(str | None, None),
    )
    require = Depends(require_scope(resource.scope))
    can_refresh = refreshable(resource.object_type)
    refresh_note = (
        "`fresh=true` reads the object again from the portal first."
        if can_refresh
        else "`fresh=true` is not supported (400 `fresh_not_supported`): the portal does not read "
        f"{resource.path.replace('_', ' ')} one at a time; the sync keeps them."
    )

    def list_objects(
        request: Request,
        params: Annotated[params_model, Query()],
        token: Annotated[str, Depends(bearer_token)],
    ) -> Any:
        # The token is checked here rather than by a dependency: one worker thread and one database
        # session serve the whole request (lists are the busiest path).
        values = params.model_dump()
        try:
            page = PageRequest(limit=values.pop("limit"), cursor=values.pop("cursor"))
            with request.app.state.sessions() as session:
                principal = authorize(request, session, token, resource.scope)
                result = object_service.list_documents(session, resource, principal.access, values, page)
        except InvalidCursor as exc:
            raise ApiError(400, "invalid_cursor", str(exc), param="cursor") from exc
        except object_service.FilterValueError as exc:  # an amount finer than its currency's cents
            raise ApiError(400, "invalid_request", str(exc), param=exc.param) from exc
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from exc
        # The stored documents are the objects' JSON already: the list is assembled, not re-encoded.
        tail = json.dumps({"has_more": result.has_more, "next_cursor": result.next_cursor})[1:]
        return Response('{"object":"list","data":[' + ",".join(result.items) + "]," + tail,
                        media_type="application/json")  # fmt: skip

    async def get_object(
        request: Request,
        object_id: str,
        principal: Principal = require,
        fresh: Annotated[bool, Query(description=refresh_note)] = False,
    ) -> Any:
        if len(object_id) > 64:
            raise ApiError(404, "not_found", f"no {resource.object_type} {object_id[:64]}…", param="id")
        if fresh and not can_refresh:
            refused = not_refreshable(resource.object_type)
            raise ApiError(refused.status, refused.code, refused.message, param="fresh")
        if fresh:
            with request.app.state.sessions() as session:
                row = object_service.row_for(session, resource, principal.access, object_id)
            if row is not None:
                try:
                    await refresh_object(request.app.state.ctx, row)
                except RefreshFailed as exc:
                    raise ApiError(exc.status, exc.code, exc.message, param="fresh") from exc
        with request.app.state.sessions() as session:
            document = object_service.get_document(session, resource, principal.access, object_id)
        if document is None:
            raise ApiError(404, "not_found", f"no {resource.object_type} {object_id}", param="id")
        return Response(document, media_type="application/json")

    router.add_api_route(
        f"/{resource.path}", list_objects, methods=["GET"], response_model=list_model,
        summary=f"List {resource.path.replace('_', ' ')}", description=resource.description,
        tags=[resource.path],
    )  # fmt: skip
    router.add_api_route(
        f"/{resource.path}/{{object_id}}", get_object, methods=["GET"], response_model=resource.schema,
        summary=f"Get one {resource.object_type.replace('_', ' ')}", tags=[resource.path],
        description=refresh_note,
        responses={404: {"description": "No such object for this token. (An object the portal no longer "
                                        "has is served as last seen, with `deleted_at` set; lists leave it out.)"},
                   **({} if can_refresh else {400: {"description": "`fresh_not_supported` for `fresh=true`."}})},
    )  # fmt: skip


for _resource in object_service.RESOURCES:
    _add_resource(_resource)
