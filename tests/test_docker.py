"""docker/: compose.yaml and the Dockerfiles refer to files, extras, CLI commands, ports and routes that exist.

There is no Docker engine on the machines that test photodex, so the images are never built here;
this reads them instead: every command a service runs parses with the real ``photodex`` parser,
published ports and health checks match the ports the commands bind, the UI points at the API
service, and every file a Dockerfile copies is in the repository.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomllib

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _subst(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` interpolation with every variable unset (the defaults)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [_subst(v) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _subst(yaml.safe_load(COMPOSE.read_text()))


def _parse(argv: list[str]) -> argparse.Namespace:
    from ui.cli.app import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way to refuse
        raise AssertionError(f"`photodex {' '.join(argv)}` does not parse") from exc


def _entrypoint(dockerfile: Path) -> list[str]:
    return next(yaml.safe_load(line.split(None, 1)[1]) for line in dockerfile.read_text().splitlines()
                if line.startswith("ENTRYPOINT"))


def _started_by_up(compose: dict[str, Any]) -> set[str]:
    return {name for name, svc in compose["services"].items() if not svc.get("profiles")}


def test_up_runs_the_api_the_ui_and_postgresql(compose):
    services = compose["services"]
    assert _started_by_up(compose) == {"api", "ui", "postgres"}
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith(("/", ".", "~")):
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"
    assert services["ui"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert any(v.endswith(":/photos:ro") for v in services["api"]["volumes"])  # the library, read-only
    assert any(v.startswith("model-cache:") for v in services["api"]["volumes"])
    assert services["ui"]["volumes"] == []  # the UI reaches photos through the API only


def test_every_dockerfile_and_what_it_copies_exists(compose):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    scripts = set(pyproject["project"]["scripts"])
    built = {svc["build"]["dockerfile"] for svc in compose["services"].values() if "build" in svc}
    assert built == {"docker/Dockerfile.cpu"}  # the default; PHOTODEX_DOCKERFILE picks the CUDA one
    for svc in compose["services"].values():
        if "build" in svc:
            assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT
    for name in DOCKERFILES:
        dockerfile = DOCKER / name
        text = dockerfile.read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
        for group in re.findall(r'pip install "\.\[([\w,]+)\]"', text):
            assert set(group.split(",")) <= extras, f"{name}: unknown extras in [{group}]"
        assert "ui" in re.findall(r'pip install "\.\[([\w,]+)\]"', text)[0].split(",")  # `photodex ui` works
        assert _entrypoint(dockerfile) == ["photodex"] and "photodex" in scripts
        assert re.search(r"^EXPOSE 8000 8501$", text, re.MULTILINE)


def _port_of(argv: list[str]) -> int:
    return int(argv[argv.index("--port") + 1])


def _published(svc: dict[str, Any]) -> set[int]:
    return {int(p.rsplit(":", 1)[1]) for p in svc.get("ports", [])}


def _health_url(svc: dict[str, Any]) -> str:
    return re.search(r"https?://[^'\"\s]+", " ".join(svc["healthcheck"]["test"])).group(0)


def test_service_commands_are_real_cli_commands_on_matching_ports(compose):
    from ui.cli.serve import cmd_serve
    from ui.cli.web import cmd_ui

    services = compose["services"]
    api, ui = services["api"], services["ui"]
    api_args = _parse(api["command"])
    assert api_args.func is cmd_serve and api_args.host == "0.0.0.0" and api_args.workers == 1
    assert _published(api) == {api_args.port} == {_port_of(api["command"])}
    ui_args = _parse(ui["command"])
    assert ui_args.func is cmd_ui and ui_args.host == "0.0.0.0"
    assert _published(ui) == {ui_args.port}
    assert ui_args.api == f"http://api:{api_args.port}"  # the API service, by its compose name and port
    # health checks ask the ports the commands bind, on routes that exist
    from ui.api.app import create_app

    assert _health_url(api) == f"http://127.0.0.1:{api_args.port}/api/v1/readyz"
    assert "/api/v1/readyz" in create_app().openapi()["paths"]
    assert _health_url(ui) == f"http://127.0.0.1:{ui_args.port}/_stcore/health"  # Streamlit's own
    # the one-off commands the file's header tells people to run
    one_off = re.compile(r"run --rm (?:-T )?photodex (.*)")
    for line in COMPOSE.read_text().splitlines():
        if line.startswith("#") and one_off.search(line):
            argv = shlex.split(one_off.search(line).group(1).split("#")[0])
            _parse(argv)
    # index jobs from the UI may index the mounted library
    roots = yaml.safe_load(api["environment"]["PHOTODEX_API_LIBRARY_ROOTS"])
    mounts = {v.split(":")[1] for v in api["volumes"]}
    assert set(roots) <= mounts

    # the API binds beyond loopback inside its container, so its reads need a key: the UI passes one through
    from ui.api.access import is_loopback

    assert not is_loopback(api_args.host) and "PHOTODEX_API_REQUIRE_KEY_FOR_READS" not in api["environment"]
    assert "PHOTODEX_API_KEY" in ui["environment"] and "PHOTODEX_API_KEY" in COMPOSE.read_text().split("services:")[0]


def test_ui_command_runs_streamlit_on_the_app(monkeypatch):
    from ui.cli import web

    args = _parse(["ui", "--api", "http://api:8000", "--host", "0.0.0.0", "--port", "8501"])
    cmd = web.streamlit_command(args)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == ROOT / "ui" / "web" / "app.py"
    assert cmd[4:].count("--server.port") == 1 and cmd[cmd.index("--server.port") + 1] == "8501"
    assert cmd[-3:] == ["--", "--api", "http://api:8000"]
    from ui.web.logic import api_url

    assert api_url(cmd[cmd.index("--") + 1:], {}) == "http://api:8000"  # what the app reads back
    monkeypatch.setenv("PHOTODEX_API_URL", "http://elsewhere:1")
    assert _parse(["ui"]).api == "http://elsewhere:1"
    from ui.cli.app import main

    assert main(["ui", "--api", "file:///etc/passwd"]) == 2  # refused before anything starts
