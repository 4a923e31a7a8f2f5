"""Every way in: the command line and the HTTP API (the web UI follows).

Packages and modules:
    cli       the photodex command line
    api       the FastAPI service (photodex serve)
    context   settings → encoder → collection wiring shared by the CLI and the API
    output    JSON/text output and escaping of names for one-line display
    progress  tqdm progress bars for long runs
"""
