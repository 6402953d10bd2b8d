"""The dashboard's router: `streamlit run dashboard/app.py` (what `harness dashboard` starts).

Pages live in `dashboard/views/` and run on their own too; selections live in each page's URL query
parameters, so a link such as `/compare?a=RUN&b=RUN&device=rpi4` reproduces a view.
"""

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="attn-harness", layout="wide")
page = st.navigation([
    st.Page(VIEWS / "overview.py", title="Overview", url_path="overview", default=True),
    st.Page(VIEWS / "compare.py", title="Compare A vs B", url_path="compare"),
    st.Page(VIEWS / "scaling.py", title="Scaling", url_path="scaling"),
    st.Page(VIEWS / "tradeoffs.py", title="Trade-offs", url_path="tradeoffs"),
    st.Page(VIEWS / "trends.py", title="Trends", url_path="trends"),
    st.Page(VIEWS / "run_detail.py", title="Run detail", url_path="run"),
])
page.run()
