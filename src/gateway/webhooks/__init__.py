"""Provider webhooks: thin starlette endpoints in front of the domain."""
