"""Every way in: the command line, the HTTP API and the web UI (which talks to the API only).

Packages and modules:
    cli       the photodex command line
    api       the FastAPI service (photodex serve)
    web       the Streamlit app (photodex ui)
    settings  the one Settings object: every layer's settings part, read from PHOTODEX_*
    context   settings → encoder → collection wiring shared by the CLI and the API
    output    JSON/text output and escaping of names for one-line display
    progress  tqdm progress bars for long runs
    demo      synthetic photo libraries and tiny models made offline (the demo, bench/ and tests/ use them)
"""
