"""The bundled attention kernels, their inputs, float64 references and accuracy metrics.

Runs on devices: imports only the standard library, numpy, psutil, torch and onnxruntime.
"""
