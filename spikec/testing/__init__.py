"""Tools for testing spikec itself, not used by the compiler or the runtimes: random ISA
programs for the RTL co-simulation (`randprog`) and small models built from configs
(`examples`). Installed with the package so that scripts/ and tests/ share them."""
