"""The dashboard's router: `streamlit run dashboard/app.py` (what `harness dashboard` starts).

Pages live in `dashboard/views/` and run on their own too; selections live in each page's URL query
parameters, so a link such as `/compare?a=RUN&b=RUN&device=rpi4` reproduces a view (a run may be named as
on the command line: `?a=tag:baseline&b=latest`).

Every page has a path of its own, the Overview included (`/overview`): Streamlit serves its default page
at `/` only, so the default is a hidden page that sends `/` on to `/overview`, query string and all.
"""

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="attn-harness", layout="wide")
overview = st.Page(VIEWS / "overview.py", title="Overview", url_path="overview")


def _home() -> None:
    st.switch_page(overview, query_params=st.query_params.to_dict())


page = st.navigation([
    st.Page(_home, title="attn-harness", url_path="home", default=True, visibility="hidden"),
    overview,
    st.Page(VIEWS / "compare.py", title="Compare A vs B", url_path="compare"),
    st.Page(VIEWS / "scaling.py", title="Scaling", url_path="scaling"),
    st.Page(VIEWS / "tradeoffs.py", title="Trade-offs", url_path="tradeoffs"),
    st.Page(VIEWS / "trends.py", title="Trends", url_path="trends"),
    st.Page(VIEWS / "run_detail.py", title="Run detail", url_path="run"),
])
page.run()
