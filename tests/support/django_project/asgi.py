import os

from django.core.asgi import get_asgi_application

import uploadmeter.django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.support.django_project.settings")

application = uploadmeter.django.wrap(get_asgi_application())
