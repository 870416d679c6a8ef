"""The only I/O: observe -> plan -> execute, and the use cases the CLI and operator call."""
