"""Integration state: the watermark (moved by compare-and-set) and the re-authorisation pause."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.db import session_scope
from models.schema import IntegrationState, IntegrationStatus
from models.values import Watermark, utcnow


def get_state(session: Session, name: str) -> IntegrationState:
    state = session.get(IntegrationState, name)
    if state is None:
        state = IntegrationState(name=name, status=IntegrationStatus.ACTIVE)
        session.add(state)
        session.flush()
    return state


def load(database_url: str, name: str) -> IntegrationState:
    with session_scope(database_url) as session:
        return get_state(session, name)


def watermark(database_url: str, name: str) -> Watermark | None:
    state = load(database_url, name)
    return Watermark.from_text(state.watermark_updated, state.watermark_id)


def move_watermark(
    session: Session, name: str, old: Watermark | None, new: Watermark | None
) -> bool:
    """Compare-and-set: False when another fetch moved it first (PITFALLS 27)."""
    if new is None or new == old:
        return True
    old_updated, old_id = old.to_text() if old else (None, None)
    new_updated, new_id = new.to_text()
    query = update(IntegrationState).where(IntegrationState.name == name)
    if old is None:
        query = query.where(IntegrationState.watermark_updated.is_(None))
    else:
        query = query.where(
            IntegrationState.watermark_updated == old_updated,
            IntegrationState.watermark_id == old_id,
        )
    result = session.execute(query.values(watermark_updated=new_updated, watermark_id=new_id))
    return result.rowcount == 1


def set_watermark(database_url: str, name: str, new: Watermark | None) -> None:
    """Operator override (``ihub watermark reset``): no compare, it is meant."""
    updated, record_id = new.to_text() if new else (None, None)
    with session_scope(database_url) as session:
        state = get_state(session, name)
        state.watermark_updated, state.watermark_id = updated, record_id


def pause_for_reauth(database_url: str, name: str, reason: str) -> None:
    with session_scope(database_url) as session:
        state = get_state(session, name)
        state.status, state.status_reason = IntegrationStatus.REAUTH_REQUIRED, reason[:2000]


def resume(database_url: str, name: str) -> None:
    with session_scope(database_url) as session:
        state = get_state(session, name)
        state.status, state.status_reason = IntegrationStatus.ACTIVE, None


def mark_fetch(database_url: str, name: str, *, success: bool) -> None:
    with session_scope(database_url) as session:
        state = get_state(session, name)
        state.last_fetch_at = utcnow()
        if success:
            state.last_success_at = state.last_fetch_at


def all_states(database_url: str) -> list[IntegrationState]:
    with session_scope(database_url) as session:
        return list(session.scalars(select(IntegrationState).order_by(IntegrationState.name)))


def paused_names(database_url: str) -> list[str]:
    with session_scope(database_url) as session:
        query = select(IntegrationState.name).where(
            IntegrationState.status == IntegrationStatus.REAUTH_REQUIRED
        )
        return list(session.scalars(query))


def is_paused(database_url: str, name: str) -> bool:
    with session_scope(database_url) as session:
        state = session.get(IntegrationState, name)
        return state is not None and state.status == IntegrationStatus.REAUTH_REQUIRED


def resume_point(database_url: str, name: str) -> str | None:
    """The continuation of a pass a run's budget cut (JSON), if any."""
    return load(database_url, name).fetch_resume


def set_resume_point(database_url: str, name: str, data: str | None) -> None:
    with session_scope(database_url) as session:
        get_state(session, name).fetch_resume = data
