"""Data: upload a text corpus or melodies (files or a zip), or pick a built-in corpus, and see what the trainer
will see: size, vocabulary, a histogram of lengths, decoded examples (melodies playable), problems file by file."""

import pandas as pd
import streamlit as st

from app_pages import ui
from seqgan import studio

UPLOAD, POEMS, MELODIES = "Upload files", "Built-in poems", "Built-in melodies"
TYPES = ["txt", "mid", "midi", "xml", "musicxml", "mxl", "abc", "krn", "zip"]

st.title("Data")
st.caption("A text corpus is one UTF-8 .txt file with one sequence (line, poem, sentence) a line. Melodies are "
           "MIDI, MusicXML, ABC or kern files, or a .zip of them; one melody is taken from each file (each tune "
           "of an ABC file).")
choice = st.radio("Corpus", [UPLOAD, POEMS, MELODIES], horizontal=True)
files = None
if choice == UPLOAD:
    files = st.file_uploader("Corpus files", type=TYPES, accept_multiple_files=True)

with st.expander("Tokenizer and sequence length"):
    left, middle, right = st.columns(3)
    model_type = left.selectbox("Text tokenizer (SentencePiece model)", ["auto", "unigram", "bpe", "char"],
                                help="auto: char for space-separated characters (Chinese poems), else unigram")
    vocab_size = middle.number_input("Text vocabulary size", min_value=5, max_value=200_000, value=None, step=500,
                                     placeholder="auto: 8,000 (char: every character)")
    seq_len = right.number_input("Sequence length", min_value=2, max_value=studio.MAX_SEQ_LEN, value=None, step=1,
                                 placeholder="auto: 99% of text lines; 32 steps for melodies")

if st.button("Read the corpus", type="primary", disabled=choice == UPLOAD and not files):
    st.session_state.pop("corpus_view", None)
    uploads = [(f.name, f.getvalue()) for f in files] if files else None
    with st.status("Reading the corpus…", expanded=True) as status:
        st.write("Parsing the files and training the tokenizer (the built-in melodies take about two minutes "
                 "the first time, then come from a cache).")
        bar = st.empty()

        def progress(done: int, total: int, message: str) -> None:
            bar.progress(done / max(total, 1), text=f"{done:,} of {total:,}: {message}")

        try:
            source = studio.upload_source(uploads) if uploads else {POEMS: "builtin:poems",
                                                                    MELODIES: "builtin:melodies"}[choice]
            view = studio.inspect_corpus(source, vocab_size=vocab_size, seq_len=seq_len, progress=progress,
                                         model_type=None if model_type == "auto" else model_type,
                                         save_files=uploads)
        except Exception as exc:  # noqa: BLE001  (shown, never a crashed page)
            status.update(label="The corpus could not be read", state="error", expanded=True)
            ui.show_error(exc, "corpus")
        else:
            st.session_state["corpus_view"] = view
            st.session_state["train_corpus"] = view.saved_as.id if view.saved_as is not None else source
            st.session_state["corpus_settings"] = {  # what the Train page starts from for this corpus
                "id": st.session_state["train_corpus"], "vocab_size": vocab_size, "seq_len": seq_len,
                "tokenizer_model": model_type}
            status.update(label=f"Read {view.name}", state="complete", expanded=False)

view = st.session_state.get("corpus_view")
if view is not None:
    st.header(view.name)
    cols = st.columns(4)
    cols[0].metric("Training sequences", f"{view.train:,}")
    cols[1].metric("Held-out sequences", f"{view.heldout:,}", help="for NLL-test and as BLEU references")
    cols[2].metric("Sequence length", view.seq_len)
    cols[3].metric("Vocabulary", f"{view.vocab_size:,}")
    st.caption(f"Tokenizer: {view.tokenizer}.")
    for note in view.notes:
        st.info(note, icon=":material/info:")
    if view.problems:
        st.warning(f"{len(view.problems)} file(s) or tune(s) were left out:", icon=":material/warning:")
        st.dataframe(pd.DataFrame(view.problems, columns=["file or tune", "problem"]), hide_index=True)
    st.subheader("Lengths")
    st.bar_chart(pd.DataFrame({"sequences": view.lengths}), x_label=view.length_label, y_label="sequences")
    st.subheader("Examples")
    if view.kind == "text":
        ui.verse(view.examples)
    else:
        for index, (column, events) in enumerate(zip(st.columns(3), view.examples[:3])):
            with column, st.container(border=True):
                ui.melody(events, key=f"data-midi-{index}", title=f"window {index + 1}",
                          midi_name=f"example-{index + 1}.mid")
    if view.saved_as is not None:
        st.success(f"Saved as “{view.saved_as.label}”: the Train page can train on it.", icon=":material/check:")
    st.page_link("app_pages/train.py", label="Train on this corpus", icon=":material/model_training:")
    st.caption("The Train page starts from the tokenizer, vocabulary and length set above; where they are "
               "auto, its preset chooses (the quick preset: 2,000 text ids).")
