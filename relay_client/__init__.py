"""The relay service and the dApp SDK."""
