"""The byok-relay benchmark: `python -m bench` (see `bench.__main__`)."""
