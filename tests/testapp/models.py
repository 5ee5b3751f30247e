from django.db import models


class Gadget(models.Model):
    """A model whose instance methods serve as tasks (the seed's API)."""

    name = models.CharField(max_length=50)
    counter = models.IntegerField(default=0)
