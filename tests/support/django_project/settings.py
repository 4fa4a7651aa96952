"""A small Django project for uploadmeter's tests: one upload page, CSRF and sessions on.

Environment: ``UM_STORE`` (the progress store URL, default ``memory://``),
``UM_THROTTLE_KBPS`` (the server reads file uploads at this many KiB/s; 0: full speed).
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))

SECRET_KEY = "django-test-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.support.django_project.urls"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.sessions",
    "uploadmeter.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}
# Sessions without a database: one process's memory (the session tests run in-process).
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(HERE, "templates")],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]

# The throttle first: it slows Django's own reads, then the stock handlers keep the files.
FILE_UPLOAD_HANDLERS = [
    "tests.support.django_project.views.ThrottleHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
THROTTLE_KBPS = int(os.environ.get("UM_THROTTLE_KBPS", "0"))

UPLOADMETER = {
    "STORE": os.environ.get("UM_STORE", "memory://"),
    "UPDATE_INTERVAL": 0,  # a progress write per read: the tests see every step
}
