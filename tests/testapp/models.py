from django.db import models


class Gadget(models.Model):
    """A model whose instance methods serve as tasks (the seed's API)."""

    name = models.CharField(max_length=50)
    counter = models.IntegerField(default=0)

    def __str__(self):
        return self.name


class Mark(models.Model):
    """Written by fixture task bodies, so tests can count executions across processes."""

    token = models.CharField(max_length=100, db_index=True)
    pid = models.IntegerField(default=0)
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.token} in {self.pid}"
