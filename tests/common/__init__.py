"""Tests of the shared crynux_common code (pure Python, no chain)."""
