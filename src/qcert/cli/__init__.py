"""The ``qcert`` command. Each module here that defines ``register(subparsers)`` adds a command."""
