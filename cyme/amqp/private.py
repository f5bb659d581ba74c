"""A private inbox: an exclusive queue bound to transient exchanges.

The remote control (replies on ``reply.celery.pidbox``) and the branch bus
(broadcasts and direct calls) each need the same thing after every
(re)connection: declare their exchanges, which do not survive a broker
restart, declare a queue only this connection may use, bind it, and
consume it without acknowledgements.
"""

from .timeouts import DEFAULT_TIMEOUT


async def open_inbox(connection, queue, exchanges, bindings, on_message,
                     timeout=DEFAULT_TIMEOUT):
    """
    A channel consuming C{queue} (exclusive, auto-deleted) into C{on_message}.

    C{exchanges} are C{(name, type)} declared non-durable, as Celery's
    pidbox ones are (other flags are refused by the broker); C{bindings}
    are C{(exchange, routing_key)}.  An exclusive queue already held by
    another connection fails here with RESOURCE_LOCKED.
    """
    channel = await connection.channel(timeout=timeout)
    for name, kind in exchanges:
        await channel.exchange_declare(
            name, kind, durable=False, auto_delete=False, timeout=timeout
        )
    declared = await channel.queue_declare(
        queue, exclusive=True, auto_delete=True, timeout=timeout
    )
    for exchange, routing_key in bindings:
        await channel.queue_bind(
            declared.queue, exchange, routing_key=routing_key, timeout=timeout
        )
    await channel.consume(declared.queue, on_message, no_ack=True, exclusive=True,
                          timeout=timeout)
    return channel


def setup_failed(log, what, failure, connection, locked=None):
    """
    Report a set-up after (re)connection that failed, and drop the
    connection so that the client reconnects and the set-up runs again.

    A set-up cut short because the connection went away (the branch is
    stopping, the broker restarted) is one line, not a traceback; an
    exclusive queue held elsewhere (RESOURCE_LOCKED) is C{locked}.
    """
    from .errors import ConnectionClosedError
    from .url import mask_passwords

    # Set-ups are named after their broker: never with its password.
    what = mask_passwords(what)
    if failure.check(ConnectionClosedError) or not getattr(connection, "is_open", True):
        log.info("{what} set-up interrupted: {error}", what=what,
                 error=mask_passwords(failure.getErrorMessage()))
        return
    if getattr(failure.value, "reply_code", None) == 405 and locked is not None:
        log.error(mask_passwords(locked))
    else:
        log.failure("cannot set up the {what}", failure, what=what)
    try:
        connection.abort()
    except Exception:
        pass
