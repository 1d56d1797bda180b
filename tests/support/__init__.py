"""Helpers shared by several test directories (importable as ``support``: ``tests/`` is on ``sys.path``
because pytest's default ``prepend`` import mode puts the root ``conftest.py``'s directory there)."""
