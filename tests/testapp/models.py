import uuid

from django.db import models


class Gadget(models.Model):
    """A model whose instance methods serve as tasks (the seed's API)."""

    name = models.CharField(max_length=50)
    counter = models.IntegerField(default=0)

    def __str__(self):
        return self.name

    def bump(self, message):
        """A seed-style instance method: count the runs, remember the message's task."""
        self.counter += 1
        self.save(update_fields=["counter"])
        message["task"].userdata["bumped_by"] = self.name
        return self.counter

    @classmethod
    def count_all(cls, message):
        return cls.objects.count()

    @staticmethod
    def shout(message):
        return message["task"].label.upper()


class Mark(models.Model):
    """Written by fixture task bodies, so tests can count executions across processes."""

    token = models.CharField(max_length=100, db_index=True)
    pid = models.IntegerField(default=0)
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.token} in {self.pid}"


# -- the seed's API: instance-method tasks on models with other primary-key types ----------

class UuidGadget(models.Model):
    """An instance-method task target with a UUID primary key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    counter = models.IntegerField(default=0)

    def __str__(self):
        return str(self.pk)

    def bump(self, message):
        self.counter += 1
        self.save(update_fields=["counter"])
        return str(self.pk)


class StrGadget(models.Model):
    """An instance-method task target with a string primary key."""

    code = models.CharField(max_length=40, primary_key=True)
    counter = models.IntegerField(default=0)

    def __str__(self):
        return self.code

    def bump(self, message):
        self.counter += 1
        self.save(update_fields=["counter"])
        return self.code


class NotAModel:
    """Its instance methods cannot be tasks: a worker cannot re-create the object."""

    def method(self, message):
        return "never"
