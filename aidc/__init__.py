"""aidc: DCIM for liquid-cooled AI server rooms."""

__version__ = "0.1.0"
