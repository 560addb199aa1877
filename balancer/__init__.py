"""Everything that decides: pool configuration, discovery, routing policies, the proxy."""
