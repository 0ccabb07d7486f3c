"""meterchain witness: a C2SP tlog-witness that cosigns only checkpoints consistent with what it
cosigned before (docs/witness.md). Pure protocol code (protocol.py), its state (store.py), a thin
HTTP shell (http.py) and the command (cli.py); it imports the contract and nothing else of ours."""
