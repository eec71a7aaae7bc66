"""Start: what SeqGAN Studio is, and generated melodies and poems from the built-in demo models at once."""

import streamlit as st

from app_pages import ui
from seqgan import studio

st.title("SeqGAN Studio")
st.markdown(
    "SeqGAN (Yu et al., AAAI 2017) trains a generator of sequences the way a GAN trains an image generator: "
    "an LSTM writes sequences token by token, a CNN discriminator tells them from real ones, and the generator "
    "learns from the discriminator's verdicts by policy gradient (after ordinary maximum-likelihood, *MLE*, "
    "pre-training). Below: a melody and a few lines of verse from the built-in demo models; **Compare** puts "
    "the MLE and the SeqGAN generator side by side, **Data** and **Train** train your own.")

seed = st.session_state.setdefault("home_seed", 0)
melodies, poems = st.columns(2, gap="large")
with melodies:
    st.subheader("A generated melody")
    with ui.reported("demo melodies"):
        model = studio.demo_model("melodies")
        if model is None:
            st.info(f"The melody demo's SeqGAN model is not in {studio.demo_root() / 'melodies'}. Train one on the "
                    "Train page: built-in melodies, quick CPU demo.")
        else:
            events = studio.samples(model, 1, 1.0, seed)[0]
            ui.melody(events, key="home-midi", title=f"SeqGAN demo, seed {seed}", midi_name=f"demo-{seed}.mid")
with poems:
    st.subheader("Generated verse")
    with ui.reported("demo poems"):
        model = studio.demo_model("poems")
        if model is None:
            st.info(f"The poem demo's SeqGAN model is not in {studio.demo_root() / 'poems'}. Train one on the "
                    "Train page: built-in poems, quick CPU demo.")
        else:
            ui.verse(studio.samples(model, 6, 1.0, seed))
if st.button("Generate others", icon=":material/refresh:"):
    st.session_state["home_seed"] = seed + 1
    st.rerun()

st.divider()
links = st.columns(4)
links[0].page_link("app_pages/compare.py", label="Compare MLE and SeqGAN", icon=":material/compare:")
links[1].page_link("app_pages/data.py", label="Look at a corpus", icon=":material/dataset:")
links[2].page_link("app_pages/train.py", label="Train a model", icon=":material/model_training:")
links[3].page_link("app_pages/checkpoints.py", label="Checkpoints", icon=":material/save:")
