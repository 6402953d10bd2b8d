"""Workload spec, sweep matrix expansion and the timing protocol.

Runs on devices: imports only the standard library, numpy, psutil, torch and onnxruntime.
"""
