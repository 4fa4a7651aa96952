import os

from django.core.wsgi import get_wsgi_application

import uploadmeter.django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.support.django_project.settings")

application = uploadmeter.django.wrap(get_wsgi_application())

# For the multi-worker tests only: every response names the worker that answered it.
from tests.support.e2e_apps import with_pid  # noqa: E402

pid_tagged = with_pid(application)
