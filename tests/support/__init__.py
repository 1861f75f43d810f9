"""Test support shared across suites: processes, S3 and network fault helpers.

Importable as ``support`` because ``tests/`` is on ``sys.path`` (the root
``conftest.py`` lives there and the suite runs in pytest's default import mode).
"""
