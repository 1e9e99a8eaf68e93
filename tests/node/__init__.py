"""Tests of the node client (inference side: tiny seeded models, no chain)."""
