"""The support and operator console (O1): `kanmon admin ...`."""
