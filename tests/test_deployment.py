"""docker-compose.yml cannot run here (no Docker engine); check what can be checked."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from shared.config import ApiSettings, ExecutorSettings, WebSettings

ROOT = Path(__file__).resolve().parents[1]
SUBSTITUTION = re.compile(r"\$\{([A-Z_]+)(?::[-?][^}]*)?\}")


class RecordingEnv(dict[str, str]):
    """A mapping that remembers every variable a settings class asks for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def service_env(service: str) -> dict[str, str]:
    """A service's environment with ${VAR...} substitutions filled with sample values."""
    raw = compose()["services"][service].get("environment", {})
    return {key: SUBSTITUTION.sub("sample-secret", str(value)) for key, value in raw.items()}


def variables_read_by_config() -> set[str]:
    env = RecordingEnv({"DARB_ADMIN_PASSWORD": "x"})
    ExecutorSettings.from_env(env)
    ApiSettings.from_env(env)
    WebSettings.from_env(env)
    return env.asked


def test_compose_has_the_four_services_with_health_checks():
    services = compose()["services"]
    assert set(services) == {"postgres", "api", "executor", "web"}
    assert all("healthcheck" in service for service in services.values())
    depends = services["api"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["executor"]["condition"] == "service_healthy"
    assert services["web"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_every_darb_variable_in_compose_is_read_by_the_config():
    known = variables_read_by_config()
    for service in ("api", "executor", "web"):
        unknown = {key for key in service_env(service) if key.startswith("DARB_")} - known
        assert not unknown, f"{service} sets variables no setting reads: {unknown}"


def test_compose_settings_are_accepted_and_wired_together():
    api = ApiSettings.from_env(service_env("api"))
    executor = ExecutorSettings.from_env(service_env("executor"))
    assert api.database_url.startswith("postgresql+psycopg://")
    assert api.executors == ("executor:50052",)
    assert executor.addr.endswith(":50052")
    assert api.agent_token == executor.token
    assert api.channels == executor.channels
    web = WebSettings.from_env(service_env("web"))
    assert web.api_addr == "api:50051" and api.addr.endswith(":50051")
    assert web.addr == "0.0.0.0:8080"


def test_compose_commands_name_modules_that_exist():
    for service in ("api", "executor", "web"):
        command = compose()["services"][service]["command"]
        assert command[:2] == ["python", "-m"]
        assert importlib.util.find_spec(command[2]) is not None
        probe = compose()["services"][service]["healthcheck"]["test"]
        assert importlib.util.find_spec(probe[probe.index("-m") + 1]) is not None


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings") :]
    documented = set(re.findall(r"`(DARB_[A-Z_]+)`", table))
    missing = variables_read_by_config() - documented
    assert not missing, f"README's settings table lacks {sorted(missing)}"


def test_the_web_ui_serves_on_loopback_8080_unless_darb_web_addr_says_otherwise():
    assert WebSettings.from_env({}).addr == "127.0.0.1:8080"
    assert WebSettings.from_env({"DARB_WEB_ADDR": "0.0.0.0:9090"}).addr == "0.0.0.0:9090"
