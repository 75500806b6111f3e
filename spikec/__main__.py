from spikec.cli import main

main()
