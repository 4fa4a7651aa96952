from django.urls import path

from tests.support.django_project import views

urlpatterns = [
    path("", views.page, name="page"),
    path("upload", views.upload, name="upload"),
    path("process", views.process, name="process"),
    path("login", views.login, name="login"),
    path("large", views.large, name="large"),
    path("js/uploader.js", views.uploader_js, name="uploader_js"),
]
