"""Emulated devices: recipes that make a device's python out of an emulator, for trying a sweep (and testing
the harness) on a CPU the controller does not have. Controller-side tools, standard library only; nothing
here is shipped to a device."""
