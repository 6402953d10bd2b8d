"""attn-harness: a benchmark harness and results database for quantized attention on edge devices.

Kept import-light: the device-side agent and worker live in this package and must not pull in the
controller's dependencies (fabric, SQLAlchemy, pandas, streamlit).
"""

__version__ = "0.1.0"
