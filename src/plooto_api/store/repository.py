"""Queries over mirrored portal objects, with tenant scoping in exactly one place.

Every read goes through `readable_statement`, so no caller can forget the scope of the token
it serves. Lists use keyset pagination on the time-ordered id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session, selectinload

from plooto_api.store.base import Base
from plooto_api.store.models import Company
from plooto_api.store.pagination import Page, PageRequest, fetch_page
from plooto_api.store.scope import AccessScope

M = TypeVar("M", bound=Base)


class ObjectRepository(Generic[M]):
    """Reads and writes of one mirrored object type."""

    def __init__(self, session: Session, model: type[M]) -> None:
        self.session = session
        self.model = model
        self._model: Any = cast(Any, model)  # the mixin columns, for the type checker
        self._company_column = self._model.id if model is Company else self._model.company_id
        self._eager = [selectinload(rel.class_attribute) for rel in model.__mapper__.relationships]

    def readable_statement(self, scope: AccessScope, *, deleted: bool = False) -> Select[M]:
        """SELECT of the rows `scope` may see: inside its connections and companies, and not deleted
        (unless `deleted`: with the rows of objects the portal no longer has)."""
        stmt = select(self.model)
        if not deleted:
            stmt = stmt.where(self._model.deleted_at.is_(None))
        if scope.connection_ids is not None:
            stmt = stmt.where(self._model.connection_id.in_(scope.connection_ids))
        if scope.company_ids is not None:
            stmt = stmt.where(self._company_column.in_(scope.company_ids))
        return stmt

    def get(self, object_id: str, scope: AccessScope, *, deleted: bool = False) -> M | None:
        """One object by gateway id, or None if it does not exist or is outside the scope (or is
        deleted, unless `deleted`)."""
        stmt = self.readable_statement(scope, deleted=deleted).where(self._model.id == object_id)
        stmt = stmt.options(*self._eager)
        return self.session.scalars(stmt).first()

    def get_by_upstream_id(self, connection_id: str, upstream_id: str) -> M | None:
        """The row mirroring a portal object, deleted or not (sync uses this to upsert)."""
        stmt = select(self.model).where(
            self._model.connection_id == connection_id, self._model.upstream_id == upstream_id
        )
        return self.session.scalars(stmt.options(*self._eager)).first()

    def list(
        self,
        scope: AccessScope,
        page: PageRequest,
        filters: Sequence[ColumnElement[bool]] = (),
    ) -> Page[M]:
        """A page of objects in id order, after the cursor, matching every filter."""
        stmt = self.readable_statement(scope).where(*filters).options(*self._eager)
        return fetch_page(self.session, stmt, self._model.id, page)

    def list_documents(
        self,
        scope: AccessScope,
        page: PageRequest,
        filters: Sequence[ColumnElement[bool]] = (),
    ) -> Page[Any]:
        """Like `list`, but rows of (id, document) only: what a list read serves."""
        stmt = (
            self.readable_statement(scope)
            .where(*filters)
            .with_only_columns(self._model.id, self._model.document)
        )
        return fetch_page(self.session, stmt, self._model.id, page, columns=True)

    def add(self, row: M) -> M:
        """Stage a new row in the session."""
        self.session.add(row)
        return row
