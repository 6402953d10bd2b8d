"""Device inventory, probes, power samplers and thermal readers."""
