"""Compare: the MLE and the SeqGAN generator of a run side by side (and optionally a second run or an uploaded
checkpoint): quality and diversity metrics, and samples with temperature and seed: verse as text, melodies as
audio players with a piano roll and a MIDI download, one column per model."""

import streamlit as st

from app_pages import ui
from seqgan import studio

st.title("Compare MLE and SeqGAN")
sources = studio.compare_sources()
if not sources:
    st.info("Nothing to compare yet: no demo models are installed and no run has a checkpoint. Train a run on "
            "the Train page, or upload a checkpoint on the Checkpoints page.")
    st.stop()

labels = dict(sources)
ids = list(labels)
earlier = [st.query_params.get("run"), st.session_state.get("compare_run")]  # a link; this session's last pick
left, right = st.columns(2)
first = ui.sticky_select(left, "Run or checkpoint", ids, key="compare-first", format_func=labels.get,
                         sent=st.session_state.pop("compare_source", None),
                         fallback=next((i for i in earlier if i in ids), studio.default_compare_source(sources)))
second = ui.sticky_select(right, "Second run or checkpoint (optional)", [""] + [i for i in ids if i != first],
                          key="compare-second", format_func=lambda i: labels[i] if i else "(none)")
st.query_params["run"] = st.session_state["compare_run"] = first  # kept across pages, as the widget's state is not

refs, models = [], []
with ui.reported(first):
    for source in [first] + ([second] if second else []):
        for ref in studio.models_of(source):
            models.append(studio.load_model(ref.path, ref.label))
            refs.append(ref)
if not models:
    st.stop()
kinds = {m.kind for m in models}
if len(kinds) > 1:
    st.warning(f"These models generate different kinds of sequences ({', '.join(sorted(kinds))}).")

controls = st.columns(3)
music = "music" in kinds
number = controls[0].slider("Samples per model", 1, 10 if music else 30, 3 if music else 8)
temperature = controls[1].slider("Temperature", 0.1, 2.0, 1.0, 0.05,
                                 help="below 1: safer, more repetitive; above 1: more surprising, more errors")
seed = controls[2].number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1)

st.subheader("Metrics")
with ui.reported("metrics"):
    table = studio.comparison_table(refs)
    if len(table):
        st.markdown("**Measured on held-out data during training**")
        ui.metric_table(table)
        st.caption("; ".join(f"{ref.label}: {ref.measured}" for ref in refs if ref.measured))
    else:
        st.info("No training metrics for these models: " + "; ".join(f"{ref.label}: {ref.missing}" for ref in refs))
with ui.reported("diversity"):
    st.markdown("**Diversity of 200 fresh samples at this temperature and seed**")
    ui.metric_table(studio.diversity_table({m.label: studio.sample_diversity(m, temperature, seed) for m in models}))

st.subheader("Samples")
st.caption("Every model draws with the same seed: where two models agree their samples agree, so the "
           "differences show what adversarial training changed.")
columns = st.columns(len(models))
for column, model in zip(columns, models):
    with column, ui.reported(model.label), st.spinner("Sampling…"):
        st.markdown(f"**{model.label}**")
        generated = studio.samples(model, number, temperature, seed)
        if model.kind == "music":
            for index, events in enumerate(generated):
                with st.container(border=True):
                    ui.melody(events, key=f"midi-{model.label}-{index}", title=f"sample {index + 1}",
                              midi_name=f"{model.role}-seed{seed}-{index + 1}.mid")
        elif model.kind == "text":
            ui.verse(generated, numbered=True)
        else:
            st.code("\n".join(generated), language=None)
