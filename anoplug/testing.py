"""Conformance kit (pytest plugin). Work in progress: fixtures and mixins land next."""
