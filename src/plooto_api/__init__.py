"""plooto_api: a self-hostable API gateway over the Plooto AP/AR portal."""

__version__ = "0.1.0"
