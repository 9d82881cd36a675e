"""Fakes of third-party services: real servers speaking their wire formats, for the tests."""
