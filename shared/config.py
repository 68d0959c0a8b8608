"""All darb settings, read from ``DARB_*`` environment variables in this one place.

Each service builds its settings once at start-up with ``from_env()``; nothing else in
the code base reads the environment, so this module is the complete list of knobs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_API_ADDR = "127.0.0.1:50051"
DEFAULT_EXECUTOR_ADDR = "127.0.0.1:50052"
ENGINE_CHOICES = ("auto", "builtin", "cli")
# Request limits; the control plane reads the same two variables for its own checks.
DEFAULT_MAX_PACKAGES_PER_REQUEST = 200
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ConfigError(ValueError):
    """A ``DARB_*`` variable holds a value the service cannot run with."""


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, given as a number of seconds or with a unit: ``90s``, ``15m``, ``12h``, ``30d``."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    unit = _DURATION_UNITS.get(raw[-1])
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError as exc:
        raise ConfigError(f"{name} must be seconds or a duration like 30d, got {raw!r}") from exc
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


@dataclass(frozen=True)
class ChannelPolicy:
    """Which channels requests may use, and which they get when they name none."""

    default_channels: tuple[str, ...]
    allowed_channels: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ChannelPolicy:
        defaults = _list(env, "DARB_DEFAULT_CHANNELS", ("conda-forge",))
        return cls(defaults, _list(env, "DARB_ALLOWED_CHANNELS", defaults))


@dataclass(frozen=True)
class TlsSettings:
    """TLS for a service and for the calls it makes; all off when nothing is set.

    ``cert``/``key`` are the service's own identity: it serves TLS with them, and presents
    them as a client certificate when it calls another darb service. ``client_ca``
    makes a server require client certificates signed by it (mutual TLS). ``ca``
    verifies the servers this process calls.
    """

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    ca: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsSettings:
        paths = {
            field: Path(value)
            if (value := env.get(f"DARB_TLS_{field.upper()}", "").strip())
            else None
            for field in ("cert", "key", "client_ca", "ca")
        }
        if (paths["cert"] is None) != (paths["key"] is None):
            raise ConfigError("DARB_TLS_CERT and DARB_TLS_KEY must be set together")
        if paths["client_ca"] is not None and paths["cert"] is None:
            raise ConfigError("DARB_TLS_CLIENT_CA needs DARB_TLS_CERT and DARB_TLS_KEY")
        for name, path in paths.items():
            if path is not None and not path.is_file():
                raise ConfigError(f"DARB_TLS_{name.upper()}: no such file {str(path)!r}")
        return cls(**paths)

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class ExecutorSettings:
    """Settings of the executor agent (``python -m services.executor``)."""

    addr: str
    data_dir: Path
    engine: str
    channels: ChannelPolicy
    operation_timeout: float
    token: str
    agent_id: str
    tls: TlsSettings = TlsSettings()
    max_packages_per_request: int = DEFAULT_MAX_PACKAGES_PER_REQUEST
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    disk: DiskSettings = field(default_factory=lambda: DiskSettings())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExecutorSettings:
        env = os.environ if env is None else env
        engine = _text(env, "DARB_PIXI_ENGINE", "auto")
        if engine not in ENGINE_CHOICES:
            raise ConfigError(f"DARB_PIXI_ENGINE must be one of {ENGINE_CHOICES}, got {engine!r}")
        return cls(
            addr=_text(env, "DARB_EXECUTOR_ADDR", DEFAULT_EXECUTOR_ADDR),
            data_dir=Path(_text(env, "DARB_DATA_DIR", "./data")).resolve(),
            engine=engine,
            channels=ChannelPolicy.from_env(env),
            operation_timeout=_number(env, "DARB_OPERATION_TIMEOUT", 3600, minimum=0.1),
            token=env.get("DARB_AGENT_TOKEN", ""),
            agent_id=_text(env, "DARB_AGENT_ID", os.uname().nodename),
            tls=TlsSettings.from_env(env),
            max_packages_per_request=int(
                _number(
                    env,
                    "DARB_MAX_PACKAGES_PER_REQUEST",
                    DEFAULT_MAX_PACKAGES_PER_REQUEST,
                    minimum=1,
                )
            ),
            max_message_bytes=int(
                _number(env, "DARB_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, minimum=1024)
            ),
            disk=DiskSettings.from_env(env),
        )


@dataclass(frozen=True)
class DiskSettings:
    """The agent's disk bounds: the package-cache sweep (``pkg_cache_max_age`` and
    ``pkg_cache_sweep_interval`` in seconds; an interval of 0 turns the scheduled sweep
    off) and the free space a create, install or apply needs (0: no check)."""

    pkg_cache_max_age: float = 30 * 86400
    pkg_cache_sweep_interval: float = 3600
    min_free_bytes: int = 1024**3

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DiskSettings:
        return cls(
            pkg_cache_max_age=_duration(env, "DARB_PKG_CACHE_MAX_AGE", cls.pkg_cache_max_age),
            pkg_cache_sweep_interval=_duration(
                env, "DARB_PKG_CACHE_SWEEP_INTERVAL", cls.pkg_cache_sweep_interval
            ),
            min_free_bytes=int(_number(env, "DARB_MIN_FREE_BYTES", cls.min_free_bytes)),
        )


@dataclass(frozen=True)
class ApiLimits:
    """Quotas and size limits of the control plane, so one user cannot hurt the others.

    Each is enforced where the request arrives and named in the RESOURCE_EXHAUSTED
    message that refuses it. ``login_backoff`` is the first wait after
    ``login_max_failures`` failed logins for one username; every further failure doubles it.
    """

    max_active_jobs_per_user: int = 100
    max_environments_per_user: int = 100
    max_packages_per_request: int = DEFAULT_MAX_PACKAGES_PER_REQUEST
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_log_line_bytes: int = 1024
    max_log_lines_per_job: int = 2000
    login_max_failures: int = 5
    login_backoff: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiLimits:
        def count(name: str, default: int, minimum: int = 1) -> int:
            return int(_number(env, name, default, minimum=minimum))

        return cls(
            max_active_jobs_per_user=count(
                "DARB_MAX_ACTIVE_JOBS_PER_USER", cls.max_active_jobs_per_user
            ),
            max_environments_per_user=count(
                "DARB_MAX_ENVIRONMENTS_PER_USER", cls.max_environments_per_user
            ),
            max_packages_per_request=count(
                "DARB_MAX_PACKAGES_PER_REQUEST", cls.max_packages_per_request
            ),
            max_message_bytes=count("DARB_MAX_MESSAGE_BYTES", cls.max_message_bytes, 1024),
            max_log_line_bytes=count("DARB_MAX_LOG_LINE_BYTES", cls.max_log_line_bytes, 80),
            max_log_lines_per_job=count(
                "DARB_MAX_LOG_LINES_PER_JOB", cls.max_log_lines_per_job, 10
            ),
            login_max_failures=count("DARB_LOGIN_MAX_FAILURES", cls.login_max_failures),
            login_backoff=_number(env, "DARB_LOGIN_BACKOFF", cls.login_backoff, minimum=0.1),
        )


DEV_ADMIN_PASSWORD = "password123"


@dataclass(frozen=True)
class ApiSettings:
    """Settings of the control plane (``python -m services.api``).

    ``admin_password_is_dev_default`` is true only when ``DARB_DEV_DEFAULTS=1`` (as
    ``make run`` sets) supplied the password; without either, start-up refuses to run.
    """

    addr: str
    # Empty: the embedded PostgreSQL server in ``data_dir``.
    database_url: str
    data_dir: Path
    executors: tuple[str, ...]
    agent_token: str
    admin_username: str
    admin_password: str
    admin_password_is_dev_default: bool
    token_ttl: float
    channels: ChannelPolicy
    worker_concurrency: int
    poll_interval: float
    job_lease: float
    shutdown_grace: float
    agent_lease: float
    job_timeout: float
    tls: TlsSettings = TlsSettings()
    limits: ApiLimits = ApiLimits()
    metrics_addr: str = ""
    processes: int = 1
    # Agents whose environments the control plane moves to the others at start, and to
    # which no new environment goes (``DARB_DRAIN``; see ``scheduling/rebuilds.py``).
    drain: tuple[str, ...] = ()
    # Job logs of jobs that ended longer ago are dropped (0: kept forever), checked
    # every ``log_retention_interval`` seconds.
    log_retention_days: float = 0
    log_retention_interval: float = 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if env is None else env
        data_dir = Path(_text(env, "DARB_DATA_DIR", "./data")).resolve()
        password = env.get("DARB_ADMIN_PASSWORD", "")
        dev_default = not password and _text(env, "DARB_DEV_DEFAULTS", "0") == "1"
        if dev_default:
            password = DEV_ADMIN_PASSWORD
        if not password:
            raise ConfigError(
                "DARB_ADMIN_PASSWORD must be set (or DARB_DEV_DEFAULTS=1 for a development run)"
            )
        executors = _list(env, "DARB_EXECUTORS", (DEFAULT_EXECUTOR_ADDR,))
        if not executors:
            raise ConfigError("DARB_EXECUTORS must name at least one executor agent")
        database_url = _database_url(env)
        processes = int(_number(env, "DARB_API_PROCESSES", 1, minimum=1))
        return cls(
            addr=_text(env, "DARB_API_ADDR", DEFAULT_API_ADDR),
            database_url=database_url,
            data_dir=data_dir,
            executors=executors,
            agent_token=env.get("DARB_AGENT_TOKEN", ""),
            admin_username=_text(env, "DARB_ADMIN_USERNAME", "admin"),
            admin_password=password,
            admin_password_is_dev_default=dev_default,
            token_ttl=_number(env, "DARB_TOKEN_TTL", 86400, minimum=1),
            channels=ChannelPolicy.from_env(env),
            worker_concurrency=int(_number(env, "DARB_WORKER_CONCURRENCY", 4, minimum=1)),
            poll_interval=_number(env, "DARB_POLL_INTERVAL", 5, minimum=0.05),
            job_lease=_number(env, "DARB_JOB_LEASE", 30, minimum=1),
            shutdown_grace=_number(env, "DARB_SHUTDOWN_GRACE_SECONDS", 5, minimum=0),
            agent_lease=_number(env, "DARB_AGENT_LEASE_SECONDS", 30, minimum=1),
            job_timeout=_number(env, "DARB_JOB_TIMEOUT", 3600, minimum=1),
            tls=TlsSettings.from_env(env),
            limits=ApiLimits.from_env(env),
            metrics_addr=_text(env, "DARB_METRICS_ADDR", ""),
            processes=processes,
            drain=_drain(env, executors),
            log_retention_days=_number(env, "DARB_LOG_RETENTION_DAYS", 0),
            log_retention_interval=_duration(env, "DARB_LOG_RETENTION_INTERVAL", 3600) or 3600,
        )


def _drain(env: Mapping[str, str], executors: tuple[str, ...]) -> tuple[str, ...]:
    """``DARB_DRAIN``: agents to empty. One of ``DARB_EXECUTORS`` must remain to take
    their environments."""
    drain = _list(env, "DARB_DRAIN", ())
    if drain and not [addr for addr in executors if addr not in drain]:
        raise ConfigError("DARB_DRAIN names every agent of DARB_EXECUTORS: none is left")
    return drain


def _database_url(env: Mapping[str, str]) -> str:
    """``DARB_DATABASE_URL`` as SQLAlchemy takes it (``postgresql://`` gets the psycopg
    driver), or empty for the embedded server."""
    url = _text(env, "DARB_DATABASE_URL", "")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url.removeprefix(prefix)
    if url and not url.startswith("postgresql+psycopg://"):
        raise ConfigError(
            f"DARB_DATABASE_URL must be a PostgreSQL URL (postgresql://...), not {url[:40]!r}"
        )
    return url


DEFAULT_WEB_ADDR = "127.0.0.1:8080"


@dataclass(frozen=True)
class WebSettings:
    """Settings of the web UI (``python -m services.web``).

    ``api_addr`` is the control plane it calls: ``DARB_WEB_API``, else ``DARB_API_ADDR``
    (the setting the SDK and the CLI read). It keeps no state, so any number of copies
    can serve behind one address. ``tls`` serves HTTPS with ``DARB_TLS_CERT``/``KEY`` (its
    cookies are then ``Secure``) and verifies the control plane with ``DARB_TLS_CA``;
    ``secure_cookies`` forces ``Secure`` cookies behind a TLS-terminating proxy.
    """

    addr: str
    api_addr: str
    tls: TlsSettings = TlsSettings()
    secure_cookies: bool = False
    api_timeout: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebSettings:
        env = os.environ if env is None else env
        api = _text(env, "DARB_WEB_API", _text(env, "DARB_API_ADDR", DEFAULT_API_ADDR))
        return cls(
            addr=_text(env, "DARB_WEB_ADDR", DEFAULT_WEB_ADDR),
            api_addr=api,
            tls=TlsSettings.from_env(env),
            secure_cookies=_text(env, "DARB_WEB_SECURE_COOKIES", "0") == "1",
            api_timeout=_number(env, "DARB_WEB_API_TIMEOUT", 30, minimum=0.1),
        )
