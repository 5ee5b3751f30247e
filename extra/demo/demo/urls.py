from django.contrib import admin
from django.urls import path

from demoapp import views

urlpatterns = [
    path("", views.home, name="home"),
    path("state/", views.state, name="state"),
    path("long-job/", views.start_long_job, name="long-job"),
    path("greet/", views.start_greet, name="greet"),
    path("greet-later/", views.start_greet_later, name="greet-later"),
    path("add-basil/", views.add_basil, name="add-basil"),
    path("admin/", admin.site.urls),
]
