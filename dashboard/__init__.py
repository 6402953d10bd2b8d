"""The Streamlit comparison dashboard."""
