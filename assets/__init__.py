"""Software-defined assets, one module per stage; thin functions that call `core`."""
