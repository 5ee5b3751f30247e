from django.db import models
from django.utils import timezone


class Plant(models.Model):
    """A model whose instance method is a task in the 2017 style (see migration 0002)."""

    name = models.CharField(max_length=100)
    waterings = models.PositiveIntegerField(default=0)
    last_watered = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return self.name

    def water(self):
        """Run by a worker, on this very object re-fetched by its primary key."""
        self.waterings += 1
        self.last_watered = timezone.now()
        self.save(update_fields=["waterings", "last_watered"])
        return f"{self.name} watered {self.waterings} times"
