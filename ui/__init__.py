"""Every way in: ``cli/`` (the photodex command line); the API and web UI follow.

Modules:
    cli       the photodex command line
    context   settings → encoder → collection wiring shared by the CLI and the API
    output    JSON/text output and escaping of names for one-line display
    progress  tqdm progress bars for long runs
"""
