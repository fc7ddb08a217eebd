"""Event buses: where envelopes come from. Each sits behind :class:`~router.bus.base.EventBus`."""
