"""Routes for Channels' own ``runworker`` command.

Either put ``"channel": sisy.routing.channel_router`` in the project's
``ProtocolTypeRouter``, or merge :data:`channel_routes` into the project's own
``ChannelNameRouter``, then run ``manage.py runworker sisy.run_task``.
"""

from channels.routing import ChannelNameRouter

from sisy.conf import get_settings
from sisy.consumers import RunConsumer

__all__ = ["channel_routes", "channel_router"]

#: ``{RUN_TASK_CHANNEL: consumer}``; merge it into a ``ChannelNameRouter``.
channel_routes = {get_settings().RUN_TASK_CHANNEL: RunConsumer.as_asgi()}

#: A ready ``ChannelNameRouter`` for the ``"channel"`` key of ``ProtocolTypeRouter``.
channel_router = ChannelNameRouter(channel_routes)
