"""The sync engine: pulls changes from the portal into the store, per connection, company and feed.

Paging follows the portal's own order, (lastModified, id): after each page the query moves on to
`modifiedSince = last record's lastModified` (or to the next page when a whole page shares one
timestamp). The position (`since`, `after_id`, page number) is saved in the sync cursor in the same transaction as the page's
rows and events, so a crash resumes at the page it was on, with nothing lost or doubled. The first
pass of a feed is the full pull; later passes ask only for what changed since the cursor.

A transient read error never deletes anything; rows are marked deleted only when the portal
confirms an object is gone (a 404 for that object). An incremental pull cannot see an object deleted
in the portal (it is simply no longer listed), so each feed is listed whole again now and then
(`sync_reconcile_interval_seconds`, by the portal's clock): what such a listing, begun from nothing
in one run, did not list is asked about one by one.

A record that refers to an object a later feed of the same run brings, or whose parts a later feed
brings, waits for it within the run (`_Deferred`), so that each change is one event with all it
refers to; a feed whose records so wait is marked to be listed whole again should the run stop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from plooto_api import mapping
from plooto_api.jobs.context import JobContext
from plooto_api.log import get_logger
from plooto_api.services.connections import (
    MAX_DIFFERENCES,
    MAX_DRIFTED_FEEDS,
    change_state,
    get_connection,
    login_failure_state,
    mark_upstream_changed,
    waiting_for_terms,
)
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import Company, Connection, SyncCursor
from plooto_api.sync.references import write_with_references
from plooto_api.sync.upsert import (
    ApplyCounts,
    MissingReferences,
    apply_records,
    company_ids,
    lock_connection,
    mark_company_gone,
    mark_gone,
    references,
)
from plooto_api.upstream import (
    FEEDS,
    FETCHABLE_TYPES,
    SHARED_LANE,
    AuthenticationError,
    ChangePage,
    Feed,
    LoginBlocked,
    PortalSession,
    SessionExpired,
    UpstreamChanged,
    UpstreamError,
    UpstreamRecord,
)

log = get_logger(__name__)

PAGE_SIZE = 200
COMPANY_CONCURRENCY = 3
# A feed that fails (one of the portal's endpoints answering 5xx, refusing this user's role, or a
# page the store refuses) stops alone; the company's other feeds go on. This many different feeds
# failing in a row, with no feed done between them, mean the portal itself is down: the run stops.
# (One endpoint failing for every company is one feed: companies sync side by side.)
FEED_FAILURES_TO_STOP = 3
# Where several feeds list one type, the column that tells their rows apart: a whole listing of a
# feed vouches only for the rows it would list. (A test checks every shared type is named here.)
SHARED_TYPE_SCOPES: dict[tuple[str, str], dict[str, str]] = {
    ("payments", "payment"): {"direction": "payable"},
    ("customer_payments", "payment"): {"direction": "receivable"},
    ("bank_accounts", "bank_account"): {"kind": "bank"},
    ("instant_wallets", "bank_account"): {"kind": "instant_wallet"},
    ("bank_accounts", "approval_rule"): {"kind": "signing_authority"},
    ("approval_policies", "approval_rule"): {"kind": "threshold"},
}
# A whole listing whose lookups of absent objects failed (the portal answering 5xx for them) is
# done again this long after, not at every run of its feed.
RECONCILE_RETRY = timedelta(hours=1)
Cadence = Literal["fast", "slow", "all"]
ProgressCallback = Callable[[str, str, int, int | None], None]  # company, feed, done, total


@dataclass
class SyncReport:
    """What one sync run did."""

    connection_id: str
    cadence: str
    counts: ApplyCounts = field(default_factory=ApplyCounts)
    pages: int = 0
    feeds: int = 0
    drift: list[str] = field(default_factory=list)
    error: str | None = None
    state: str | None = None
    failed_feeds: list[tuple[str, str, Exception]] = field(default_factory=list)  # company, feed, error
    drifted_feeds: list[str] = field(default_factory=list)  # "company/feed", stopped by a difference
    pulled_feeds: set[str] = field(default_factory=set)  # "company/feed", pulled to the end
    companies: set[str] = field(default_factory=set)  # the portal ids of the companies the login reaches

    @property
    def ok(self) -> bool:
        return self.error is None and not self.drift


def feeds_for(cadence: Cadence) -> list[Feed]:
    """The feeds a sync of this cadence pulls."""
    return [feed for feed in FEEDS if cadence == "all" or feed.cadence == cadence]


def _iso(value: datetime) -> str:
    return value.isoformat()


def vouched_types(feed: Feed) -> dict[str, dict[str, str]]:
    """The object types whose stored rows a whole listing of `feed` accounts for, each with the
    column values that select its rows: the types the portal can be asked about one by one (an
    accounting link goes with its object, see mark_gone)."""
    listed_by = Counter(t for f in FEEDS for t in f.object_types)
    return {
        object_type: SHARED_TYPE_SCOPES.get((feed.name, object_type), {})
        for object_type in feed.object_types
        if object_type in FETCHABLE_TYPES
        and (listed_by[object_type] == 1 or (feed.name, object_type) in SHARED_TYPE_SCOPES)
    }


def _cursor(session: Session, connection_id: str, company_upstream_id: str, feed: str) -> SyncCursor:
    lock_connection(session, connection_id)  # another process syncing this login creates it too
    cursor = session.scalars(
        select(SyncCursor).where(
            SyncCursor.connection_id == connection_id,
            SyncCursor.company_upstream_id == company_upstream_id,
            SyncCursor.object_type == feed,
        )
    ).first()
    if cursor is None:
        cursor = SyncCursor(
            connection_id=connection_id, company_upstream_id=company_upstream_id, object_type=feed
        )
        session.add(cursor)
        session.flush()
    return cursor


# How far the portal's clock must have been past `since` when a pull ended for the next pull to
# skip the records at `since` (clocks of the portal's servers may differ by less than this).
SETTLED_AFTER = timedelta(minutes=1)
_TICK = timedelta(microseconds=1)  # the portal's timestamps are to the microsecond


class _Position:
    """Where a feed's pull stands: (since, after_id) keyset plus the page number within `since`.

    `modifiedSince` is inclusive, so each pull lists again the records at `since`: one may have
    changed at that same instant after the last listing. Once the portal's clock was past `since`
    (by SETTLED_AFTER) when a pull listed them, no change can take that instant any more, and the
    next pull starts just after it (`exclusive`): many records sharing one instant (reminders sent in
    one batch) are then not listed again by every pull."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.since: datetime | None = datetime.fromisoformat(state["since"]) if state.get("since") else None
        self.after_id: str | None = state.get("after_id")
        self.page: int = int(state.get("page", 1))
        self.exclusive: bool = bool(state.get("exclusive"))
        listed = state.get("listed_at")
        # When the portal's clock was at least, as it listed the last page.
        self.listed_at: datetime | None = datetime.fromisoformat(listed) if listed else None

    def start(self) -> None:
        """A new pull after a finished one: from the first page, past `since` once it is settled."""
        self.page = 1
        self.exclusive = (
            self.since is not None
            and self.listed_at is not None
            and self.listed_at - self.since > SETTLED_AFTER
        )

    def query_since(self) -> datetime | None:
        """The `modifiedSince` of this pull's query."""
        return self.since + _TICK if self.since is not None and self.exclusive else self.since

    def advance(self, last: UpstreamRecord, *, keyset: bool) -> None:
        """Move past a page whose last (greatest) record is `last`."""
        if keyset and (self.since is None or last.modified_at > self.since):
            # Records at the new `since` may follow on the next page: the next query includes them.
            self.since, self.after_id, self.page, self.exclusive = (
                last.modified_at,
                last.upstream_id,
                1,
                False,
            )
        else:  # the page shares `since` (or the feed has no keyset): next page of the same query
            self.page += 1
            if keyset:
                self.after_id = max(self.after_id or "", last.upstream_id)

    def as_state(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since) if self.since else None,
            "after_id": self.after_id,
            "page": self.page,
            "exclusive": self.exclusive,
            "listed_at": _iso(self.listed_at) if self.listed_at else None,
        }


@dataclass
class _Deferred:
    """Within one company's run: the object types the feeds still to come bring (`later`), and the
    records, by feed, whose references to such objects wait for them.

    Also, in a later pull, the records of objects whose parts a later feed brings (`parents`:
    invoices, whose reminders come next) changed since their feed's last pull, and then their parts:
    `held` until a page refers to them (a customer payment), which writes them after its own records,
    or to the end of the run. An invoice that changed and gained reminders is then one update, not
    two (the first without them, a state the portal never had), and it follows the payment that paid
    it. The feeds that held any bear the `relist` mark meanwhile: a run that stops loses nothing."""

    later: frozenset[str] = frozenset()
    records: dict[str, list[UpstreamRecord]] = field(default_factory=dict)
    first_pulls: set[str] = field(default_factory=set)  # feeds whose held records are their first pull's
    parents: frozenset[str] = frozenset()
    held: dict[tuple[str, str], UpstreamRecord] = field(default_factory=dict)
    held_feeds: set[str] = field(default_factory=set)  # feeds that held any: marked `relist` meanwhile
    # The held records referring to each held one (its accounting link, its reminders), by its key.
    referrers: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    # Feeds whose cursor bore the `relist` mark when this run began pulling them (set by a run that
    # stopped, its held records lost): this run's writes do not take it off; they are listed whole.
    marked_before: set[str] = field(default_factory=set)
    # Names this run on the marks it sets (`marked_by`): another run syncing the login at once may
    # mark a feed for what it holds after this run did; this run's end does not take that mark off.
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def next_feed(self, feeds: list[Feed]) -> None:
        """Before pulling a feed: `feeds` are those after it in this run."""
        self.later = frozenset(t for f in feeds for t in f.object_types)
        self.parents = frozenset(part.parent_type for t, part in mapping.PARTS.items() if t in self.later)

    def hold(
        self, feed: str, records: list[UpstreamRecord], waiting: set[tuple[str, str]], *, first_pull: bool
    ) -> list[UpstreamRecord]:
        """Keep the records that refer to `waiting` objects until the end of the run: those records."""
        kept = [r for r in records if any(ref in waiting for ref in _refs(r))]
        self.records.setdefault(feed, []).extend(kept)
        if first_pull:
            self.first_pulls.add(feed)
        return kept

    def hold_parents(
        self, feed: str, records: list[UpstreamRecord], changed_after: datetime | None
    ) -> list[UpstreamRecord]:
        """Hold a page's records of `parents` changed after `changed_after` (those listed again at
        the feed's last `since` were written then), and those referring to held ones (an invoice's
        accounting link): the rest, to write now."""
        keys = {
            (r.object_type, r.upstream_id)
            for r in records
            if r.object_type in self.parents
            and (changed_after is None or r.version is None or r.version > changed_after)
        }
        keys |= self.held.keys()
        if not keys:
            return records
        rest = []
        for record in records:
            key = (record.object_type, record.upstream_id)
            referred = _refs(record) & keys
            if key in keys or referred:
                self.held.pop(key, None)  # a record listed again goes after what it follows
                self.held[key] = record
                for ref in referred:
                    self.referrers.setdefault(ref, []).append(key)
            else:
                rest.append(record)
        if len(rest) < len(records):
            self.held_feeds.add(feed)
        return rest

    def hold_parts(self, feed: str, records: list[UpstreamRecord]) -> list[UpstreamRecord]:
        """Hold the parts of held records (an invoice's reminders), to be written with them: the rest."""
        if not self.held:
            return records
        rest = []
        for record in records:
            part = mapping.PARTS.get(record.object_type)
            parent = (part.parent_type, record.fields[part.parent_key].upstream_id) if part else None
            if parent is not None and parent in self.held:
                key = (record.object_type, record.upstream_id)
                self.held[key] = record
                self.referrers.setdefault(parent, []).append(key)
            else:
                rest.append(record)
        if len(rest) < len(records):
            self.held_feeds.add(feed)
        return rest

    def take(self, records: list[UpstreamRecord]) -> list[UpstreamRecord]:
        """The held records that `records` refer to (a customer payment the invoices it pays), with
        the held ones referring to those (their reminders): no longer held, to be written with
        `records`."""
        if not self.held:
            return []
        wanted = {ref for record in records for ref in _refs(record) if ref in self.held}
        if not wanted:
            return []
        wanted |= {key for ref in wanted for key in self.referrers.get(ref, ())}
        return [self.held.pop(key) for key in list(self.held) if key in wanted]

    def give_back(self, records: list[UpstreamRecord]) -> None:
        """Hold again records taken for a page that was not written."""
        self.held.update({(r.object_type, r.upstream_id): r for r in records})


def _lanes(feeds: list[Feed]) -> tuple[list[Feed], list[list[Feed]]]:
    """The shared lane's feeds, and each other lane's, in order (see Feed.lane)."""
    lanes: dict[str, list[Feed]] = {}
    for feed in feeds:
        lanes.setdefault(feed.lane, []).append(feed)
    shared = lanes.pop(SHARED_LANE, [])
    return shared, list(lanes.values())


def _refs(record: UpstreamRecord) -> set[tuple[str, str]]:
    return {(object_type, u) for object_type, ids in references(record).items() for u in ids}


def _unmark_relist(
    session: Session,
    connection_id: str,
    company_upstream_id: str,
    feeds: Iterable[str],
    deferred: _Deferred,
) -> None:
    """Take the `relist` mark off these feeds' cursors: what their pulls held back is written. (Not
    off those marked before this run: what an earlier run held back is not, see _Deferred.)"""
    for feed_name in feeds:
        if feed_name in deferred.marked_before:
            continue
        cursor = _cursor(session, connection_id, company_upstream_id, feed_name)
        state = cursor.page_state
        if state and not state.get("in_progress") and state.get("marked_by") in (None, deferred.token):
            cursor.page_state = {
                key: value
                for key, value in state.items()
                if key not in ("relist", "marked_by", "relist_after")
            }


class SyncEngine:
    """Runs syncs for connections, with the shared resources of one worker process."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    async def sync_connection(
        self,
        connection_id: str,
        *,
        cadence: Cadence = "all",
        progress: ProgressCallback | None = None,
        deliberate: bool = False,
    ) -> SyncReport:
        """Pull every feed of `cadence` for every company the login reaches.

        `deliberate`: a person asked for this run (the CLI's sync), so a connection waiting for its
        user to accept the portal's new terms signs in now rather than at its next retry time (see
        login_blocked_reason); nothing else the login guard stops is lifted by it.

        A connection removed before or during the run ends it quietly: state `removed`, nothing
        written after the removal (its rows are gone with it), no error raised.
        """
        report = SyncReport(connection_id=connection_id, cadence=cadence)
        try:
            return await self._sync_connection(report, cadence, progress, deliberate=deliberate)
        except Exception:
            if not self._removed(connection_id):
                raise
            report.error, report.state = "the connection was removed", "removed"
            log.info("sync_stopped", connection=connection_id, reason="connection removed")
            await self.ctx.portals.forget(connection_id)
            return report

    def _removed(self, connection_id: str) -> bool:
        with self.ctx.sessions() as session:
            return session.get(Connection, connection_id) is None

    async def _sync_connection(
        self, report: SyncReport, cadence: Cadence, progress: ProgressCallback | None, *, deliberate: bool
    ) -> SyncReport:
        connection_id = report.connection_id
        portal = await self.ctx.portals.get(connection_id)
        with self.ctx.sessions() as session:
            connection = get_connection(session, connection_id)
            first_sync = connection.last_synced_at is None
            # Only new terms give way to a person asking: a refused password or a lock never does.
            deliberate = deliberate and waiting_for_terms(connection)
        blocked = await self.ctx.portals.login_blocked(connection_id, portal, deliberate=deliberate)
        if blocked is not None:
            # Never log in again by ourselves after the portal refused us: that is how lockouts happen.
            report.error, report.state = f"not syncing: {blocked}", connection.state
            return report
        restore: tuple[str, str | None, dict[str, Any] | None] | None = None
        try:
            await portal.ensure_logged_in(deliberate=deliberate)
            if first_sync:
                restore = (connection.state, connection.state_reason, connection.state_detail)
                self._set_state(connection_id, "syncing")  # with any drift: only an operator clears it
            companies = await self._sync_companies(portal, connection_id, report)
            report.companies = {company for company, _ in companies}
            # Companies are independent: pull several at once (the portal session's throttle still
            # caps the requests in flight); feeds within a company go in dependency order.
            limit = asyncio.Semaphore(COMPANY_CONCURRENCY)

            async def pull_in_turn(company_upstream_id: str, company_name: str, feeds: list[Feed], *,
                                   whole: bool = False) -> None:  # fmt: skip
                deferred = _Deferred()
                for index, feed in enumerate(feeds):
                    deferred.next_feed(feeds[index + 1 :])
                    await pull(company_upstream_id, company_name, feed, deferred=deferred, whole=whole)
                # Records held for their parts that no page took, and records that referred to
                # objects of a later feed, now that those are in (in that order: the second may
                # refer to the first).
                if deferred.held_feeds:
                    report.counts.add(await self._write_held(portal, connection_id, company_upstream_id,
                                                             deferred))  # fmt: skip
                if deferred.records:
                    report.counts.add(await asyncio.to_thread(self._apply_deferred, connection_id,
                                                              company_upstream_id, deferred))  # fmt: skip

            async def sync_company(company_upstream_id: str, company_name: str) -> None:
                async with limit:
                    feeds = await asyncio.to_thread(self._feeds, connection_id, company_upstream_id, cadence)
                    # A feed marked by a run that stopped is listed whole below: listing it from its
                    # cursor first would write alone a change that waited there for a later feed.
                    marked = await asyncio.to_thread(self._to_relist, connection_id, company_upstream_id)
                    shared, lanes = _lanes([f for f in feeds if f not in marked])
                    await pull_in_turn(company_upstream_id, company_name, shared)
                    # Side by side (see Feed.lane), each with its own waiting records; a lane that
                    # stops the run stops the others at their next feed (see pull).
                    ended = await asyncio.gather(
                        *(pull_in_turn(company_upstream_id, company_name, lane) for lane in lanes),
                        return_exceptions=True,
                    )
                    for result in ended:
                        if isinstance(result, BaseException):
                            raise result
                    # Feeds so marked (or by this run, should what it held not be written) are listed
                    # whole again, in turn: what waited then waits again, so a change the stopped
                    # run held is still one update.
                    relist = await asyncio.to_thread(self._to_relist, connection_id, company_upstream_id)
                    if relist:
                        await pull_in_turn(company_upstream_id, company_name, relist, whole=True)

            failing: set[str] = set()  # feeds failed since the last one done (see FEED_FAILURES_TO_STOP)
            stopped: list[BaseException] = []  # the failure that stopped the run: no feed starts after it

            async def pull(company_upstream_id: str, company_name: str, feed: Feed, *,
                           deferred: _Deferred | None = None, whole: bool = False) -> None:  # fmt: skip
                if stopped:  # every company's next feed, those waiting for their turn included
                    raise stopped[0]
                try:
                    await self._sync_feed(portal, connection_id, company_upstream_id, company_name, feed,
                                          report, progress, deferred=deferred or _Deferred(), whole=whole)  # fmt: skip
                except UpstreamChanged as exc:
                    # Only this feed stops; the others keep syncing. Companies share one portal,
                    # so a difference is reported once, not once per company.
                    for difference in exc.differences or [str(exc)]:
                        if difference not in report.drift:
                            report.drift.append(difference)
                    # The feed stopped may be another type's (payments whose new bill reads differ):
                    # the connection names it, and its cursor says why it stands.
                    report.drifted_feeds.append(f"{company_upstream_id}/{feed.name}")
                    await asyncio.to_thread(
                        self._note_feed_error, connection_id, company_upstream_id, feed, exc
                    )
                    log.warning("upstream_changed", connection=connection_id, feed=feed.name)
                except Exception as exc:  # this feed's endpoint failing, or its page refused by the store
                    if isinstance(exc, AuthenticationError) and not isinstance(exc, SessionExpired):
                        stopped.append(exc)  # the login, not this feed: every feed stops, and none starts
                        raise
                    # (A session lost again right after signing in is this feed's: the next signs in.)
                    failing.add(feed.name)
                    report.failed_feeds.append((company_upstream_id, feed.name, exc))
                    await asyncio.to_thread(
                        self._note_feed_error, connection_id, company_upstream_id, feed, exc
                    )
                    if isinstance(exc, UpstreamError):
                        log.warning("feed_failed", connection=connection_id, feed=feed.name, error=str(exc))
                    else:
                        log.exception("feed_failed", connection=connection_id, feed=feed.name)
                    if len(failing) >= FEED_FAILURES_TO_STOP:
                        stopped.append(exc)
                        raise
                else:
                    failing.clear()
                    report.pulled_feeds.add(f"{company_upstream_id}/{feed.name}")

            results = await asyncio.gather(
                *(sync_company(c, n) for c, n in companies), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except LoginBlocked as exc:  # the session was lost and a write or read found the login refused since
            report.error = f"not syncing: {exc}"
            with self.ctx.sessions() as session:
                report.state = get_connection(session, connection_id).state
        except AuthenticationError as exc:
            failure = login_failure_state(exc)
            if failure is None:  # the session lost again right after signing in
                self._fail(report, "upstream_unavailable", None, {"error": type(exc).__name__}, exc)
            else:
                self._fail(report, *failure, exc)
        except UpstreamChanged as exc:
            # Outside any feed: the companies' own listing (or the login's pages) in a shape the
            # adapter does not know. Nothing can sync past it; writes stop until an operator clears it.
            for difference in exc.differences or [str(exc)]:
                if difference not in report.drift:
                    report.drift.append(difference)
            report.error, report.state = f"{type(exc).__name__}: {exc}", "upstream_changed"
            mark_upstream_changed(self.ctx.sessions, connection_id, report.drift)
            log.warning("upstream_changed", connection=connection_id, feed=None)
        except UpstreamError as exc:  # unreachable, rate limited past retries, or refusing us
            self._fail(report, "upstream_unavailable", None, {"error": type(exc).__name__}, exc)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Stopped from outside (Ctrl-C, a shutdown): a first sync's `syncing` would otherwise
            # stand until another sync finished. What it wrote stays; the next resumes from there.
            if restore is not None and not self._removed(connection_id):
                self._set_state(connection_id, *restore)
            raise
        if report.error is None and report.failed_feeds:
            self._feeds_failed(report)
        elif report.error is None:
            self._finish(report)
        portal.save_state()  # with the rate the throttle learned, so a restart resumes near the limit
        return report

    def _feeds(self, connection_id: str, company_upstream_id: str, cadence: Cadence) -> list[Feed]:
        """The feeds of `cadence`, and any other feed of this company not pulled whole yet (a new
        connection's or a new company's first sync, whichever schedule runs first), in dependency
        order: a bill is written with its vendor's id only when the vendors came first."""
        if cadence == "all":
            return feeds_for("all")
        with self.ctx.sessions() as session:
            pulled = set(
                session.scalars(
                    select(SyncCursor.object_type).where(
                        SyncCursor.connection_id == connection_id,
                        SyncCursor.company_upstream_id == company_upstream_id,
                        SyncCursor.full_sync_completed_at.is_not(None),
                    )
                )
            )
        return [feed for feed in FEEDS if feed.cadence == cadence or feed.name not in pulled]

    def _apply_deferred(
        self, connection_id: str, company_upstream_id: str, deferred: _Deferred
    ) -> ApplyCounts:
        """Apply again the records whose references waited for a later feed, and take the `relist`
        mark off their feeds; when some are still missing (that feed failed), leave it for a relist."""
        # A first pull's records are completed quietly (history); later pulls' are news.
        batches: dict[bool, dict[tuple[str, str], UpstreamRecord]] = {True: {}, False: {}}
        for feed_name, held in deferred.records.items():
            batch = batches[feed_name in deferred.first_pulls]
            batch.update({(r.object_type, r.upstream_id): r for r in held})
        counts = ApplyCounts()
        try:
            with transaction(self.ctx.sessions) as session:  # all or nothing
                for completing, batch in batches.items():
                    if batch:
                        counts.add(apply_records(session, connection_id, company_ids(session, connection_id),
                                                 list(batch.values()), utcnow(), absent=set(),
                                                 completing=completing))  # fmt: skip
                _unmark_relist(session, connection_id, company_upstream_id, deferred.records, deferred)
        except MissingReferences:  # rolled back: the feeds keep their mark and are listed whole again
            return ApplyCounts()
        return counts

    async def _write_held(
        self, portal: PortalSession, connection_id: str, company_upstream_id: str, deferred: _Deferred
    ) -> ApplyCounts:
        """Write the records held for their parts that no page took (invoices no customer payment of
        the run referred to, with their reminders), reading what they refer to that the store lacks
        (a new customer), and take the `relist` mark off the feeds that held them. Should a read
        fail, the mark stays: listed whole again, they are written then."""
        records = list(deferred.held.values())

        def write(page: list[UpstreamRecord], absent: set[tuple[str, str]] | None) -> Awaitable[ApplyCounts]:
            return asyncio.to_thread(self._apply_held, connection_id, company_upstream_id, page, absent,
                                     deferred)  # fmt: skip

        try:
            counts = await write_with_references(portal, company_upstream_id, records, write)
        except UpstreamError as exc:
            log.warning("held_records_not_written", connection=connection_id, company=company_upstream_id,
                        records=len(records), error=str(exc))  # fmt: skip
            return ApplyCounts()
        deferred.held.clear()
        return counts

    def _apply_held(
        self,
        connection_id: str,
        company_upstream_id: str,
        records: list[UpstreamRecord],
        absent: set[tuple[str, str]] | None,
        deferred: _Deferred,
    ) -> ApplyCounts:
        with transaction(self.ctx.sessions) as session:
            counts = apply_records(session, connection_id, company_ids(session, connection_id), records,
                                   utcnow(), absent=absent)  # fmt: skip
            _unmark_relist(session, connection_id, company_upstream_id, deferred.held_feeds, deferred)
        return counts

    def _to_relist(self, connection_id: str, company_upstream_id: str) -> list[Feed]:
        """The feeds of this company marked to be listed whole again (see _write_with_references)."""
        with self.ctx.sessions() as session:
            marked = {
                cursor.object_type
                for cursor in session.scalars(
                    select(SyncCursor).where(
                        SyncCursor.connection_id == connection_id,
                        SyncCursor.company_upstream_id == company_upstream_id,
                    )
                )
                if (cursor.page_state or {}).get("relist")
            }
        return [feed for feed in FEEDS if feed.name in marked]

    def _set_state(self, connection_id: str, state: str, reason: str | None = None,
                   detail: dict[str, Any] | None = None) -> None:  # fmt: skip
        with transaction(self.ctx.sessions) as session:
            change_state(session, get_connection(session, connection_id), state, reason=reason, detail=detail)

    def _fail(self, report: SyncReport, state: str, reason: str | None, detail: dict[str, Any] | None,
              exc: Exception) -> None:  # fmt: skip
        report.error = f"{type(exc).__name__}: {exc}"
        report.state = state
        with transaction(self.ctx.sessions) as session:
            # (Uncleared drift waits in the detail: only an operator clears it.)
            change_state(session, get_connection(session, report.connection_id), state, reason=reason,
                         detail=detail)  # fmt: skip

    def _note_feed_error(
        self, connection_id: str, company_upstream_id: str, feed: Feed, exc: Exception
    ) -> None:
        """Keep why a feed failed on its cursor (what `GET /connections/{id}` callers and operators see)."""
        with transaction(self.ctx.sessions) as session:
            cursor = _cursor(session, connection_id, company_upstream_id, feed.name)
            cursor.last_error = f"{type(exc).__name__}: {exc}"[:1000]

    def _feeds_failed(self, report: SyncReport) -> None:
        """End a run in which some feeds failed and the others were pulled: the portal failing them
        makes the connection upstream_unavailable (naming them) until a run pulls them all."""
        first = report.failed_feeds[0][2]
        if report.drift:
            self._finish(report)  # their differences are kept (only an operator clears them)
        if any(isinstance(exc, UpstreamError) for _, _, exc in report.failed_feeds):
            with transaction(self.ctx.sessions) as session:
                connection = get_connection(session, report.connection_id)
                failed = {f"{company}/{feed}" for company, feed, exc in report.failed_feeds
                          if isinstance(exc, UpstreamError)}  # fmt: skip
                self._unavailable(session, connection, report, failed, type(first).__name__)
            report.error = f"{type(first).__name__}: {first}"
        else:  # the store refused a page: nothing the portal or the login can change
            failed = {f"{company}/{feed}" for company, feed, _ in report.failed_feeds}
            report.error = f"{len(failed)} feed(s) failed ({', '.join(sorted(failed)[:5])}): {type(first).__name__}: {first}"
            with self.ctx.sessions() as session:
                report.state = get_connection(session, report.connection_id).state

    def _still_failing(self, connection: Connection, report: SyncReport) -> set[str]:
        """The feeds an earlier run found failing (the connection's upstream_unavailable names them)
        that this run did not pull: a run of the other cadence does not list them, so it proves
        nothing about them. Feeds of companies the login no longer reaches are let go."""
        if connection.state != "upstream_unavailable":
            return set()
        named = (connection.state_detail or {}).get("feeds") or []
        return {
            feed
            for feed in named
            if isinstance(feed, str) and feed not in report.pulled_feeds
            and feed.rpartition("/")[0] in report.companies
        }  # fmt: skip

    def _unavailable(
        self,
        session: Session,
        connection: Connection,
        report: SyncReport,
        failed: set[str],
        error: str | None,
    ) -> None:
        """The connection upstream_unavailable, naming the feeds failing now: this run's and those
        still failing from before. Only feeds newly failing are news (an event); fewer failing, or
        the same ones, only update the detail (a repeat of one outage is not a new one)."""
        feeds = sorted(
            failed | self._still_failing(connection, report)
        )  # sorted: the same failures read alike
        before = set((connection.state_detail or {}).get("feeds") or [])
        if connection.state == "upstream_unavailable" and set(feeds) <= before:
            connection.state_detail = {**(connection.state_detail or {}), "feeds": feeds}
        else:
            detail: dict[str, Any] = {
                "error": error or (connection.state_detail or {}).get("error"),
                "feeds": feeds,
            }
            change_state(session, connection, "upstream_unavailable", detail=detail)  # with any drift
        report.state = connection.state

    def _finish(self, report: SyncReport) -> None:
        with transaction(self.ctx.sessions) as session:
            connection = get_connection(session, report.connection_id)
            if report.drift:  # added to those found before (only an operator clears them)
                change_state(session, connection, "upstream_changed", detail={
                    "differences": report.drift[:MAX_DIFFERENCES],
                    "feeds": sorted(set(report.drifted_feeds))[:MAX_DRIFTED_FEEDS],
                })  # fmt: skip
            elif self._still_failing(connection, report):
                # Feeds failing before that this run did not pull: still failing, as far as we know.
                self._unavailable(session, connection, report, set(), None)
            else:  # upstream_changed still, when differences wait for an operator
                change_state(session, connection, "healthy")
            connection.last_synced_at = utcnow()
            report.state = connection.state

    async def _sync_companies(
        self, portal: PortalSession, connection_id: str, report: SyncReport
    ) -> list[tuple[str, str]]:
        records = await portal.list_companies()
        with transaction(self.ctx.sessions) as session:
            counts = apply_records(session, connection_id, {}, records, utcnow())
        report.counts.add(counts)
        await self._confirm_companies_gone(portal, connection_id, {r.upstream_id for r in records}, report)
        return [(r.upstream_id, str(r.fields.get("name", r.upstream_id))) for r in records]

    async def _confirm_companies_gone(
        self, portal: PortalSession, connection_id: str, listed: set[str], report: SyncReport
    ) -> None:
        """A stored company the portal no longer lists, and answers 404 for, is gone for this login
        (the client book was closed or the firm lost access): it and all kept of it are marked
        deleted, and its cursors dropped, so that should the login reach it again it is pulled whole."""
        with self.ctx.sessions() as session:
            unlisted = [
                upstream_id
                for upstream_id in session.scalars(
                    select(Company.upstream_id).where(
                        Company.connection_id == connection_id, Company.deleted_at.is_(None)
                    )
                )
                if upstream_id not in listed
            ]
        for upstream_id in unlisted:
            if await portal.fetch_object(upstream_id, "company", upstream_id) is not None:
                continue  # still there (listed while it changed); the next sync sees it
            with transaction(self.ctx.sessions) as session:
                lock_connection(session, connection_id)
                company = session.scalars(
                    select(Company).where(
                        Company.connection_id == connection_id, Company.upstream_id == upstream_id
                    )
                ).one()
                marked = mark_company_gone(session, company, utcnow())
                report.counts.updated += marked
                report.counts.events += marked  # each with its `<type>.deleted`
                session.execute(
                    delete(SyncCursor).where(
                        SyncCursor.connection_id == connection_id,
                        SyncCursor.company_upstream_id == upstream_id,
                    )
                )
            log.info("company_gone", connection=connection_id, company=upstream_id)

    async def _sync_feed(
        self,
        portal: PortalSession,
        connection_id: str,
        company_upstream_id: str,
        company_name: str,
        feed: Feed,
        report: SyncReport,
        progress: ProgressCallback | None,
        *,
        deferred: _Deferred,
        whole: bool = False,
    ) -> None:
        """Pull one feed of one company from its cursor (`whole`: from the start, keeping the cursor's
        `relist` mark until the last page). `deferred`: what the run's later feeds bring, and where
        records that refer to it wait (see _write_with_references)."""
        with transaction(self.ctx.sessions) as session:
            cursor = _cursor(session, connection_id, company_upstream_id, feed.name)
            state = dict(cursor.page_state or {})
            cursor.last_run_at = utcnow()
            first_pull = cursor.full_sync_completed_at is None  # set by this pull's last page at the earliest
        began = portal.portal_now()
        resuming = bool(state.get("in_progress"))
        # Records modified after this were not listed by the last pull (see _Deferred.hold_parents).
        # (Or, for a feed marked to be listed again, after the `since` of the pull that held them.)
        after = state["relist_after"] if "relist_after" in state else state.get("since")
        changed_after = datetime.fromisoformat(after) if after else None
        # When this feed was last listed whole (portal time); a cursor from before it was kept
        # counts from now, rather than relisting every feed at once on the first run after upgrade.
        listed_whole_at = state.get("listed_whole_at") or _iso(began)
        if not resuming and feed.incremental and self._reconcile_due(listed_whole_at, began):
            whole = True  # to find what was deleted in the portal since
        if state.get("relist") and not (whole and not resuming):
            deferred.marked_before.add(feed.name)  # what the run that marked it held may be lost
        if whole and not resuming:
            state = {"relist": True}
        elif not feed.incremental and not resuming:
            state = {}  # a feed without modified-since is listed whole every time
        relist = bool(state.get("relist"))
        position = _Position(state)
        if not resuming:
            position.start()  # a finished pull resumes from its keyset, at the first page
        # Begun from nothing in this run, the listing shows every object the portal has: what it does
        # not show may be gone. (One resumed after a stop saw only part of them here.)
        complete = not resuming and position.query_since() is None
        report.feeds += 1
        seen: set[tuple[str, str]] = set()
        done = 0

        async def listed() -> tuple[ChangePage, datetime, int]:
            asked_at = portal.portal_now()  # the portal lists no earlier than this
            page_number = position.page
            page = await portal.list_changes(
                company_upstream_id, feed.name, modified_since=position.query_since(),
                page_number=page_number, page_size=PAGE_SIZE,
            )  # fmt: skip
            return page, asked_at, page_number

        def fetch() -> asyncio.Future[tuple[ChangePage, datetime, int]]:
            return asyncio.ensure_future(listed())

        pending = fetch()
        try:
            while True:
                page, position.listed_at, page_number = await pending
                # The keyset follows the feed's own objects, in the portal's order; records derived from
                # them (fees, FX, accounting mappings) ride along and carry no position.
                own = [r for r in page.records if r.object_type == feed.object_types[0]]
                listed_again = sum((r.object_type, r.upstream_id) in seen for r in own)  # those at `since`
                seen.update((r.object_type, r.upstream_id) for r in page.records)
                # The portal counts what its query matches, from `since` on: what is left of it, from
                # this page on, plus what came before is the feed's total for this run.
                left = page.total_count - (page_number - 1) * PAGE_SIZE - listed_again
                total = max(done + left, done + len(own) - listed_again)
                done += len(own) - listed_again
                more = page.has_more and bool(own)
                if own:
                    position.advance(own[-1], keyset=feed.incremental)
                state = {**position.as_state(), "in_progress": more, "listed_whole_at": listed_whole_at}
                if relist and (more or not whole):  # a whole listing's last page takes the mark off
                    state["relist"] = True
                if more:
                    pending = fetch()  # the next query is known: fetch it while this page is written
                # Records at exactly `since` are applied again rather than skipped: one may have changed
                # at the same instant as the last sync. Unchanged records cost a comparison, no write.
                counts = await self._write_with_references(portal, connection_id, company_upstream_id, feed,
                                                           page.records, state, deferred, first_pull,
                                                           changed_after)  # fmt: skip
                relist = relist or bool(state.get("relist"))
                report.counts.add(counts)
                report.pages += 1
                if progress is not None:
                    progress(company_name, feed.name, done, total if more else done)
                if not more:
                    break
        finally:
            if not pending.done():
                pending.cancel()
        if complete:
            try:
                await self._confirm_absences(portal, connection_id, company_upstream_id, feed, seen, report)
            except UpstreamError:
                if feed.incremental and self.ctx.settings.sync_reconcile_interval_seconds:
                    # Asked again in RECONCILE_RETRY, not at every run: each would list the feed whole.
                    again = began - timedelta(seconds=self.ctx.settings.sync_reconcile_interval_seconds)
                    await asyncio.to_thread(self._listed_whole, connection_id, company_upstream_id, feed,
                                            again + RECONCILE_RETRY)  # fmt: skip
                raise
            if feed.incremental:
                await asyncio.to_thread(self._listed_whole, connection_id, company_upstream_id, feed, began)

    def _reconcile_due(self, listed_whole_at: str, now: datetime) -> bool:
        every = self.ctx.settings.sync_reconcile_interval_seconds
        return bool(every) and now - datetime.fromisoformat(listed_whole_at) >= timedelta(seconds=every)

    def _listed_whole(
        self, connection_id: str, company_upstream_id: str, feed: Feed, began: datetime
    ) -> None:
        """Note on the cursor that a whole listing begun at `began` (portal time) and its absences'
        lookups are done: the next is due one interval later."""
        with transaction(self.ctx.sessions) as session:
            cursor = _cursor(session, connection_id, company_upstream_id, feed.name)
            if cursor.page_state is not None and not cursor.page_state.get("in_progress"):
                cursor.page_state = {**cursor.page_state, "listed_whole_at": _iso(began)}

    async def _write_with_references(
        self,
        portal: PortalSession,
        connection_id: str,
        company_upstream_id: str,
        feed: Feed,
        records: list[UpstreamRecord],
        state: dict[str, Any],
        deferred: _Deferred,
        first_pull: bool,
        changed_after: datetime | None,
    ) -> ApplyCounts:
        """Write a page with the objects it refers to that the store lacks (sync.references): a bill
        whose vendor is new (the vendors feed runs less often), reminders of an invoice made after the
        invoices were listed.

        A later pull's records whose parts a later feed brings wait in `deferred` (hold_parents)
        with their parts for a page that refers to them, which writes them after its own records
        (a customer payment's events come before those of the invoice it paid), or for the end of
        the run; `state` gets the `relist` mark meanwhile, as below.

        Objects of a feed this run pulls later (a recurring plan's invoices) are not read one by one:
        the records holding them wait in `deferred` to be applied at the end of the run, and `state`
        gets the `relist` mark, saved with the page, so that should the run stop first, the next lists
        the feed whole again. A feed's first pull writes them now with those references empty, as
        later feeds may refer to them, and completes them quietly at the end; a later pull writes them
        only at the end, so their change is one update with its references, not two."""
        later: set[tuple[str, str]] = set()  # (type, portal id) of the records left to the end of the run
        news: set[tuple[str, str]] = set()  # those of the held records taken (a later pull's: news)

        def wait(missing: set[tuple[str, str]], held: list[UpstreamRecord]) -> set[tuple[str, str]]:
            waiting = {ref for ref in missing if ref[0] in deferred.later}
            if waiting:
                state["relist"] = True
                kept = deferred.hold(feed.name, held, waiting, first_pull=first_pull)
                if not first_pull:
                    later.update((r.object_type, r.upstream_id) for r in kept)
            return waiting

        def write(page: list[UpstreamRecord], absent: set[tuple[str, str]] | None) -> Awaitable[ApplyCounts]:
            if state.get("relist"):
                state["marked_by"] = deferred.token  # (see _Deferred.token)
            if later:
                rest = [r for r in page if (r.object_type, r.upstream_id) not in later]
                # One the page's other records refer to is written now, as a first pull's would be.
                if not any(ref in later for r in rest for ref in _refs(r)):
                    page = rest
            return asyncio.to_thread(
                self._write_page, connection_id, company_upstream_id, feed, page, state, absent, news
            )

        parents = not first_pull and bool(deferred.parents.intersection(feed.object_types))
        if parents:
            records = deferred.hold_parents(feed.name, records, changed_after)
        elif not first_pull:
            records = deferred.hold_parts(feed.name, records)
        if feed.name in deferred.held_feeds or feed.name in deferred.records:
            # Marked while anything it held waits, whichever page held it (a whole listing's last
            # page would otherwise take the mark off).
            state["relist"] = True
        if parents and feed.name in deferred.held_feeds:  # and where what it held began
            state["relist_after"] = _iso(changed_after) if changed_after else None
        taken = deferred.take(records)
        news.update((r.object_type, r.upstream_id) for r in taken)
        records = [*records, *taken]
        try:
            return await write_with_references(portal, company_upstream_id, records, write, wait=wait)
        except BaseException:
            deferred.give_back(taken)  # written at the end of the run, should it get there
            raise

    def _write_page(
        self,
        connection_id: str,
        company_upstream_id: str,
        feed: Feed,
        records: list[UpstreamRecord],
        state: dict[str, Any],
        absent: set[tuple[str, str]] | None = None,
        news: set[tuple[str, str]] | None = None,
    ) -> ApplyCounts:
        """Apply one page and move the cursor past it, in one transaction (a crash resumes after it).
        With `absent`, a reference to any other object the store lacks writes nothing and raises
        MissingReferences (see apply_records). `news`: records held by a later pull that the page
        took, news even in this feed's first pull."""
        with transaction(self.ctx.sessions) as session:
            cursor = _cursor(session, connection_id, company_upstream_id, feed.name)
            counts = apply_records(session, connection_id, company_ids(session, connection_id), records,
                                   utcnow(), first_pull=cursor.full_sync_completed_at is None,
                                   absent=absent, news=news or frozenset())  # fmt: skip
            cursor.page_state = state
            cursor.watermark = state.get("since")
            if not state["in_progress"]:
                cursor.last_success_at = utcnow()
                cursor.last_error = None
                if cursor.full_sync_completed_at is None:
                    cursor.full_sync_completed_at = utcnow()
        return counts

    async def _confirm_absences(
        self,
        portal: PortalSession,
        connection_id: str,
        company_upstream_id: str,
        feed: Feed,
        seen: set[tuple[str, str]],
        report: SyncReport,
    ) -> None:
        """After a whole listing, ask the portal about each stored object of the feed it did not list;
        mark it deleted on a 404 only (an object that changed while the listing ran is still there)."""
        with self.ctx.sessions() as session:
            company_id = company_ids(session, connection_id).get(company_upstream_id)
            missing: list[tuple[str, str]] = []
            for object_type, scope in vouched_types(feed).items():
                model: Any = mapping.object_map_for(object_type).model
                stmt = select(model.upstream_id).where(
                    model.connection_id == connection_id,
                    model.company_id == company_id,
                    model.deleted_at.is_(None),
                    *(getattr(model, column) == value for column, value in scope.items()),
                )
                missing += [(object_type, u) for u in session.scalars(stmt) if (object_type, u) not in seen]
        gone = 0
        for object_type, upstream_id in missing:
            if await portal.fetch_object(company_upstream_id, object_type, upstream_id) is not None:
                continue  # still there (it changed while we listed); the next sync picks it up
            model = mapping.object_map_for(object_type).model
            with transaction(self.ctx.sessions) as session:
                row = session.scalars(
                    select(model).where(
                        model.connection_id == connection_id, model.upstream_id == upstream_id
                    )
                ).first()
                if row is not None:
                    marked = mark_gone(session, row, utcnow())
                    report.counts.updated += marked
                    report.counts.events += marked  # each with its `<type>.deleted`
                    gone += bool(marked)
        if missing:
            log.info("absences_confirmed", connection=connection_id, company=company_upstream_id,
                     feed=feed.name, unlisted=len(missing), gone=gone)  # fmt: skip
