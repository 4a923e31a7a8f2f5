"""``photodex ui``: the Streamlit web app (``ui/web/app.py``) against a running photodex API."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from indexer.core.errors import ConfigError

from .common import Subparsers

API_URL_ENV = "PHOTODEX_API_URL"  # read by ui.web.logic.api_url (kept free of imports here: no streamlit at parse time)
DEFAULT_API_URL = "http://127.0.0.1:8000"


def app_path() -> Path:
    """The Streamlit script of the web app (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "web" / "app.py"


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for ``args`` (headless, no usage statistics)."""
    return [sys.executable, "-m", "streamlit", "run", str(app_path()),
            "--server.address", args.host, "--server.port", str(args.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer", "--", "--api", args.api]


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise ConfigError("the web UI needs Streamlit: pip install 'photodex[ui]'") from None
    if not args.api.startswith(("http://", "https://")):
        raise ConfigError(f"--api must be an http(s) URL, got {args.api!r}")
    env = dict(os.environ, **{API_URL_ENV: args.api})
    sys.stderr.write(f"photodex UI on http://{args.host}:{args.port} (API {args.api}); Ctrl-C stops it\n")
    sys.stderr.flush()
    command = streamlit_command(args)
    if os.name == "posix":  # become the server: signals (Ctrl-C, docker stop) reach it directly
        os.execve(command[0], command, env)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("ui", help="the web UI (Streamlit) for a running `photodex serve`",
                       description="The web UI for a running `photodex serve`. It sends the key typed into its "
                                   "sidebar, else $PHOTODEX_API_KEY (a read key: a server listening beyond "
                                   "loopback wants one for every read).")
    p.add_argument("--api", default=os.environ.get(API_URL_ENV, DEFAULT_API_URL),
                   help=f"base URL of the photodex API (default: ${API_URL_ENV} or {DEFAULT_API_URL})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_ui)
