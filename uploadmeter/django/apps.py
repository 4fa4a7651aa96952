"""The Django app of ``INSTALLED_APPS = [..., "uploadmeter.django"]`` (Django finds it by
this module's name): its label, and its template tags (``{% load uploadmeter %}``)."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["UploadMeterConfig"]


class UploadMeterConfig(AppConfig):
    name = "uploadmeter.django"
    label = "uploadmeter"  # not "django", the package's last name
    verbose_name = "uploadmeter"
