"""Signed completion callbacks: when a job ends, its result is POSTed to the
URL the caller gave, signed, retried until delivered or too old.

``signing`` and ``policy`` are pure; ``delivery`` does the I/O.
"""
