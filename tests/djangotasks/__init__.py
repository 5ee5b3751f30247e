"""Fixture tasks written against Django's Tasks API, run by Sisy (``tests/settings_tasks.py``)."""
