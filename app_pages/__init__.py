"""The pages of the Streamlit app (app.py lists them); ui.py holds widgets they share."""
