"""Django's template tag libraries of uploadmeter: ``{% load uploadmeter %}``."""

__all__: list[str] = []
