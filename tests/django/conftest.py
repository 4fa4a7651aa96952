"""Django is configured once per test process, with the small project in tests/support."""

from tests.support.django_support import setup_django

setup_django()
