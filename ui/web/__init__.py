"""The photodex web app (Streamlit), talking to the HTTP API only; started by ``photodex ui``.

Modules:
    app       the Streamlit entry point: page config, navigation, the connection sidebar
    client    PhotodexClient: one typed method per API endpoint (httpx), ApiError / NotAvailable, SSE parsing
    models    policy versions that keep unknown fields, to send back (other responses: the API's own models)
    logic     pure helpers: API URL from args/env, filters, score bounds, labels, policy threshold edits
    session   the session's API URL and key, cached clients, cached thumbnails and searches
    nav       the pages (st.Page per view) and switching between them
    widgets   shared drawing: connection and filter sidebars, errors, thumbnail grids
    views     one module per page (see views/__init__.py)
"""
