"""Code shared by the node client and the relay: contract access, task schemas, scores, request signing."""
