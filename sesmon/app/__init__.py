"""The application layer: the ``sesmon`` command, the demo and the terminal board.

The only part of sesmon that may import the stages (import-linter checks it in CI).
"""
