"""The accelerator's SystemVerilog (docs/rtl.md), installed as `spikec.rtl` package data
so that `spikec run --target fpga --device rtl` can build it outside a checkout. Nothing
here is Python; runtime/rtl_sim.py finds the sources next to this file."""
