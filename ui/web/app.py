"""The photodex web app (Streamlit): ``photodex ui [--api URL]`` or ``streamlit run ui/web/app.py -- --api URL``.

It talks to the photodex API only (``ui.web.client``); the API's URL is fixed when the app starts
(``--api`` or ``PHOTODEX_API_URL``) and the API key is typed into the sidebar (else ``PHOTODEX_API_KEY``).
"""

from __future__ import annotations

import streamlit as st

from ui.web import nav
from ui.web.widgets import connection_sidebar


def main() -> None:
    st.set_page_config(page_title="photodex", page_icon=":material/photo_library:", layout="wide")
    nav.apply_pending()
    page = st.navigation(nav.all_pages())
    connection_sidebar()
    page.run()


if __name__ == "__main__":  # streamlit runs this file as __main__
    main()
