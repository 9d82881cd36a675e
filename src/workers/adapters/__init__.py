"""The only code that talks to providers."""
