"""``photodex serve`` (the HTTP API under uvicorn) and ``photodex apikey create|list|revoke``."""

from __future__ import annotations

import argparse
import os
import sys

from ui.output import emit

from .common import EXIT_OK, Subparsers, open_collection, settings_from, shared_options

# flag → setting, handed to the server (and to every worker process) through the environment
_ENV_FLAGS = {"collection": "PHOTODEX_COLLECTION", "database_url": "PHOTODEX_DATABASE_URL",
              "model": "PHOTODEX_MODEL", "pretrained": "PHOTODEX_PRETRAINED", "device": "PHOTODEX_DEVICE"}
HOST_ENV = "PHOTODEX_API_HOST"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    for flag, env in _ENV_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[env] = str(value)
    os.environ[HOST_ENV] = args.host  # the address bound below decides whether reads need a key (ui.api.access)
    settings_from(args)  # validate the settings before starting the server
    level = ["warning", "info", "debug"][min(args.verbose, 2)]
    uvicorn.run("ui.api.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=level, proxy_headers=False)
    return EXIT_OK


def cmd_apikey_create(args: argparse.Namespace) -> int:
    from ui.api.security import create_api_key

    with open_collection(settings_from(args)) as coll:
        key = create_api_key(coll.catalog, args.name, args.scope)
    if args.json:
        emit({"name": args.name, "scope": args.scope, "key": key}, True, str)
    else:
        sys.stdout.write(key + "\n")
        sys.stderr.write(f"API key {args.name!r} (scope {args.scope}) created; it is shown only this once. "
                         "Send it as the X-API-Key header.\n")
    return EXIT_OK


def cmd_apikey_list(args: argparse.Namespace) -> int:
    from ui.api.security import list_api_keys

    with open_collection(settings_from(args)) as coll:
        rows = list_api_keys(coll.catalog)
    emit(rows, args.json, lambda rs: "\n".join(f"{r['name']}\t{r['scope']}\t{r['prefix']}…\t{r['created_at']}"
                                               for r in rs) or "no API keys")
    return EXIT_OK


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    from ui.api.security import revoke_api_key

    with open_collection(settings_from(args)) as coll:
        revoke_api_key(coll.catalog, args.name)
    emit({"revoked": args.name}, args.json, lambda d: f"revoked API key {d['revoked']!r}")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API (uvicorn); see /docs for the OpenAPI document",
                       parents=shared_options(model=True))
    p.add_argument("--host", default=os.environ.get(HOST_ENV, "127.0.0.1"),
                   help=f"address to bind (default ${HOST_ENV} or 127.0.0.1: this machine only); beyond loopback "
                        "(0.0.0.0, ::, a LAN address) reads need an API key of scope read")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (use a PostgreSQL catalog, PHOTODEX_DATABASE_URL, for more than one)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("apikey", help="API keys of the HTTP API")
    keys = p.add_subparsers(dest="apikey_command", required=True)
    c = keys.add_parser("create", help="create a key; it is printed once and stored only as its sha256",
                        parents=shared_options())
    c.add_argument("name")
    c.add_argument("--scope", choices=["read", "write", "admin"], default="read")
    c.set_defaults(func=cmd_apikey_create)
    ls = keys.add_parser("list", parents=shared_options(), help="names, scopes and prefixes of the keys")
    ls.set_defaults(func=cmd_apikey_list)
    rv = keys.add_parser("revoke", parents=shared_options(), help="delete a key")
    rv.add_argument("name")
    rv.set_defaults(func=cmd_apikey_revoke)
