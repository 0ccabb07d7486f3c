"""``python -m meterchain.witness``: the witness's commands without the rest of meterchain's CLI
(a smaller import; the same as ``meterchain witness``)."""

from meterchain.witness.cli import app

if __name__ == "__main__":
    app()
