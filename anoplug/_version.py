"""Versions of the host package and of the plugin API it speaks."""

__version__ = "0.1.0"

#: Plugin API version. A plugin whose spec names another *major* version is refused;
#: a newer *minor* version only warns (the plugin may use features this host lacks).
API_VERSION = "1.0"
