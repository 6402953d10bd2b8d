"""The dashboard's pages; each runs on its own (`AppTest.from_file`) and under the router in `app.py`."""
