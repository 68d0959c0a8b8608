"""Environment versions: what each successful job left (written by ``darb_finish_job``),
read newest first, one at a time, or as the lock a rollback applies."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from services.api.records import LockToApply
from services.api.repo import environments
from services.api.repo.models import Environment, EnvironmentVersion, User
from shared.errors import NotFound
from shared.manifests import parse_manifest

_WITHOUT_TEXTS = (defer(EnvironmentVersion.manifest), defer(EnvironmentVersion.lockfile))


def page(
    session: Session, caller: User, environment_id: str, below: int | None, limit: int
) -> list[EnvironmentVersion]:
    """Versions newest first, below ``below`` when given, without their texts. Those
    of a deleted environment stay readable."""
    environments.get_visible(session, caller, environment_id, deleted=True)
    query = (
        select(EnvironmentVersion)
        .options(*_WITHOUT_TEXTS)
        .where(EnvironmentVersion.environment_id == environment_id)
    )
    if below is not None:
        query = query.where(EnvironmentVersion.version < below)
    return list(session.scalars(query.order_by(EnvironmentVersion.version.desc()).limit(limit)))


def get(session: Session, caller: User, environment_id: str, version: int) -> EnvironmentVersion:
    """One version with its texts; 0 is the current one."""
    environment = environments.get_visible(session, caller, environment_id, deleted=True)
    return of(session, environment, version)


def of(
    session: Session, environment: Environment, version: int, texts: bool = True
) -> EnvironmentVersion:
    """Version ``version`` (0: the current one); without ``texts`` its manifest and lock
    are read only if used (a lock can be large)."""
    number = version or environment.current_version
    query = select(EnvironmentVersion).where(
        EnvironmentVersion.environment_id == environment.id,
        EnvironmentVersion.version == number,
    )
    if not texts:
        query = query.options(*_WITHOUT_TEXTS)
    row = session.scalars(query).one_or_none() if number else None
    if row is None:
        what = f"version {version}" if version else "a current version"
        raise NotFound(f"environment {environment.name!r} has no {what}")
    return row


def lock_to_apply(session: Session, environment_id: str, name: str, version: int) -> LockToApply:
    """A rollback's work for the agent: the version's manifest fields and its lock."""
    row = session.get(EnvironmentVersion, (environment_id, version))
    if row is None:
        raise NotFound(f"version {version} of environment {environment_id} is gone")
    fields = parse_manifest(row.manifest)
    packages = list(fields.specs.values())
    return LockToApply(name, fields.channels, fields.platforms, packages, row.lockfile)
