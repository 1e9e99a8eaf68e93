"""Python reference implementations of on-chain formulas (checked against the contracts)."""
