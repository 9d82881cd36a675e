"""Kanmon gateway: the GraphQL edge and the transport-free domain the workers share."""
