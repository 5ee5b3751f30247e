from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="sisy",
    version="2.0.0.dev0",
    description="Cron-like and one-shot background tasks for Django, run by Channels workers.",
    long_description=Path(__file__).with_name("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    packages=find_packages(include=["sisy", "sisy.*"]),
    include_package_data=True,
    package_data={"sisy": ["templates/**/*", "static/**/*"]},
    python_requires=">=3.11",
    install_requires=[
        "Django>=5.2",
        "channels>=4.2",
        # channels-redis 4.2+ works with redis-py 5-8; with redis-py 8 set a host
        # socket_timeout above 5 s (system check sisy.W002 explains why).
        "channels-redis>=4.2",
        "croniter>=2.0",
        "pydantic>=2.6",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        # Django's Tasks framework on Django 5.2 (Django 6.0+ has django.tasks built in).
        "django-tasks": ["django-tasks>=0.12"],
        "test": [
            "pytest>=8",
            "pytest-django>=4.8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "psycopg[binary]>=3.1",
        ],
        "docs": ["sphinx>=7.2", "furo>=2024.1"],
        "dev": ["ruff>=0.6", "tox>=4.11"],
    },
    classifiers=[
        "Framework :: Django",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
