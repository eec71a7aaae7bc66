"""SeqGAN Studio: ``streamlit run app.py``.

The entry point only sets up the pages; each page lays out widgets and calls ``seqgan.studio`` (and through it
``seqgan.jobs`` and the rest of the package), where all the logic lives. The page files are in ``app_pages/``,
not ``pages/``: a folder named ``pages/`` next to this file makes a freshly started server run Streamlit's legacy
page discovery for a deep link such as ``/Compare`` (a "Page not found" message over the page), so it is not used.
"""

import streamlit as st

from seqgan import studio

st.set_page_config(page_title="SeqGAN Studio", page_icon=":material/music_note:", layout="wide")
studio.configure_torch()

PAGES = [
    st.Page("app_pages/home.py", title="Start", icon=":material/home:", default=True),
    st.Page("app_pages/data.py", title="Data", icon=":material/dataset:", url_path="Data"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:", url_path="Train"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:", url_path="Compare"),
    st.Page("app_pages/checkpoints.py", title="Checkpoints", icon=":material/save:", url_path="Checkpoints"),
]
st.navigation(PAGES).run()
