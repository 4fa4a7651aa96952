import os

from django.core.wsgi import get_wsgi_application

import uploadmeter.django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.support.django_project.settings")

application = uploadmeter.django.wrap(get_wsgi_application())
