"""ASGI application of the test project, so that Channels' ``runworker`` can be tested."""

import django

django.setup()

from channels.routing import ProtocolTypeRouter  # noqa: E402

import sisy.routing  # noqa: E402

application = ProtocolTypeRouter({"channel": sisy.routing.channel_router})
