from django.urls import path

from tests.support.django_project import views

urlpatterns = [
    path("", views.page, name="page"),
    path("upload", views.upload, name="upload"),
    path("process", views.process, name="process"),
    path("login", views.login, name="login"),
]
