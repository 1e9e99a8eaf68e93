"""The GPU node: stakes, runs inference, follows the protocol."""
