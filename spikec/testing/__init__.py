"""Tools for testing spikec itself, not used by the compiler or the runtimes: random ISA
programs for the RTL co-simulation (`randprog`), small models built from configs
(`examples`), the simulator's SPMM counts as the cost model sees them (`spmm_log`). Installed with the package so that scripts/ and tests/ share them."""
