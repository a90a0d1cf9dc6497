"""RabbitMQ for every Darkroom service: connect, declare, publish with confirms, consume with ack/nack.

Rules this module enforces so that services need not think about them:
- durable messages are published with confirms and `mandatory`, so a message the broker did not
  take, or could not route, raises instead of vanishing;
- a message is acked only after its handler returned (its effect is durable by then);
- a message that cannot be decoded, or whose handler raised, is dead-lettered with the reason and
  the service carries on; a handler that wants another try later raises `Retry`;
- a message that keeps crashing its consumer is dead-lettered by the broker after
  `DELIVERY_LIMIT` deliveries (quorum queues count them), so nothing crash-loops.

Every name, argument and header it uses comes from `schemas/topology.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import aio_pika
import aiormq
import msgspec
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pamqp.commands import Basic
from yarl import URL

from schemas import topology
from schemas.events import TRANSIENT_EVENTS, AnyCommand, AnyEvent, Command, Event, GenerateImages, new_id
from schemas.settings import broker_urls, redact_url
from schemas.topology import DELIVERY_COUNT_HEADER, QUEUE_HEADER, REASON_HEADER, REPLY_TO, Topology

log = structlog.get_logger("bus")

PUBLISH_TIMEOUT = 15.0
# A quorum queue that lost its leader (its node died) nacks publishes until it has elected another,
# a few seconds on a cluster: a nacked publish is sent again, with backoff, for this long.
NACK_RETRY_SECONDS = 20.0
# AMQP heartbeat, seconds: a process that stops answering (frozen, stopped, partitioned) loses its
# connection after about two of these, and the broker gives the messages it held to others.
HEARTBEAT = 10
# Seconds between reconnect attempts after a failed one (aio-pika's default is 5): with a cluster
# the next attempt goes to another node, which is most likely up.
RECONNECT_INTERVAL = 1

# One encoder and one decoder of each kind per process.
encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(AnyEvent)
command_decoder = msgspec.json.Decoder(AnyCommand)

# Errors that mean "the connection is gone": the message stays unacked and comes back after reconnect.
CONNECTION_ERRORS = (aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)

T = TypeVar("T")

# How many times the message being handled was delivered before (0 on its first delivery):
# quorum queues count returns to the queue, from a nack or from a consumer that died holding it.
delivery_count: contextvars.ContextVar[int] = contextvars.ContextVar("delivery_count", default=0)


class Retry(Exception):
    """Raised by a handler that cannot finish now but may later: the message is requeued."""


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached or did not confirm a message."""


def routing_key(message: Event | Command) -> str:
    return type(message).__struct_config__.tag  # type: ignore[return-value]


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection to any of several broker nodes (one cluster): after a drop, or a failed
    attempt, the next attempt goes to the next address, and aio-pika restores channels, queues,
    bindings and consumers there as it would on the same node.

    aio-pika's RobustConnection reconnects only to `self.url`, and clears `transport` at the start of
    every attempt (`_RobustConnection__connect_transport`, and `close`): that assignment is where
    `url` moves on. tests/integration/test_cluster.py holds it to that.
    """

    def __init__(self, urls: list[URL], start: int, **kwargs: Any):
        self.addresses = urls
        self._turn = start
        super().__init__(urls[start % len(urls)], **kwargs)

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and "_transport" in self.__dict__:  # an attempt begins (not __init__)
            self._turn += 1
            self.url = self.addresses[self._turn % len(self.addresses)]
        self.__dict__["_transport"] = value


async def connect_robust(url: str, *, name: str, timeout: float = 30.0) -> FailoverConnection:
    """A robust connection to `url` (one AMQP URL or a cluster's comma-separated nodes), retried
    over every address until `timeout`.

    Each process starts at a random node, so that a cluster's connections spread over its nodes."""
    given = broker_urls(url)
    urls = [URL(part).update_query(heartbeat=HEARTBEAT, reconnect_interval=RECONNECT_INTERVAL) for part in given]
    deadline = asyncio.get_running_loop().time() + timeout
    turn = random.randrange(len(urls))
    waiting_logged = False
    while True:
        # Made here, not by aio_pika.connect_robust(), so that an attempt cut short (shutdown while
        # the broker is away) can be closed instead of leaving its reconnect loop running.
        connection = FailoverConnection(urls, turn, client_properties={"connection_name": name})
        try:
            await connection.connect(timeout=5)
            return connection
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await connection.close()
            if not isinstance(exc, (OSError, aiormq.exceptions.AMQPError, asyncio.TimeoutError)):
                raise
            where = ", ".join(redact_url(part) for part in given)
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerUnavailable(f"cannot reach RabbitMQ at {where}: {exc}") from exc
            if not waiting_logged:
                log.info("waiting for the broker", url=where)
                waiting_logged = True
            turn += 1
            await asyncio.sleep(0.25)


class Bus:
    """A robust connection with a confirming channel for durable messages and a plain one for transient ones."""

    def __init__(self, connection: AbstractRobustConnection, topology: Topology):
        self.connection = connection
        self.topology = topology
        self._confirming: AbstractChannel | None = None
        self._transient: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._transient_exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task] = set()
        self._delay_queues: set[str] = set()
        # Where GenerateImages go (topology.ROUTINGS): each model's own queue, or the shared one.
        self.routing = "affinity"
        # The model queues this process declared and bound (so a send to one is never unroutable).
        self._model_queues: set[str] = set()
        # A model queue's consuming channel and queue, kept to consume it again after a stop.
        self._model_consumers: dict[str, AbstractQueue] = {}
        self._renewing = asyncio.Lock()

    @classmethod
    async def connect(cls, url: str, topology: Topology, *, name: str, timeout: float = 30.0) -> Bus:
        """Connect to `url` (one AMQP URL, or the comma-separated nodes of a cluster; retrying until
        `timeout`), open channels and declare the whole topology."""
        connection = await connect_robust(url, name=name, timeout=timeout)
        bus = cls(connection, topology)
        await bus.open()
        return bus

    async def open(self) -> None:
        self._transient = await self.connection.channel(publisher_confirms=False)
        await self._open_confirming()
        await declare_topology(self._confirming, self.topology)

    async def _open_confirming(self) -> None:
        self._confirming = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        for name in (self.topology.events, self.topology.commands, self.topology.dead_letter):
            self._exchanges[name] = await self._confirming.get_exchange(name, ensure=False)
        self._exchanges[""] = self._confirming.default_exchange  # routes straight to a named queue

    async def _renew_confirming(self, nacked: AbstractChannel) -> None:
        """A new confirming channel in place of `nacked`, unless another publish renewed it already.

        RabbitMQ 3.10: a channel whose first publish to a quorum queue met that queue without a
        leader (its node just died) has every later publish to it nacked, long after a new leader
        took over, while a new channel's are confirmed. The old channel is closed once the
        publishes still in flight on it had their time."""
        async with self._renewing:
            if self._confirming is not nacked:
                return
            await self._open_confirming()

        async def close_later() -> None:
            await asyncio.sleep(PUBLISH_TIMEOUT)
            with contextlib.suppress(Exception):
                await nacked.close()

        task = asyncio.ensure_future(close_later())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    @property
    def connected(self) -> bool:
        return not self.connection.is_closed and self.connection.connected.is_set()

    async def publish(self, event: Event) -> None:
        """Publish an event; durable ones return only once the broker confirmed them."""
        transient, key = isinstance(event, TRANSIENT_EVENTS), routing_key(event)
        await self._publish(self.topology.events, key, encoder.encode(event), event.event_id, transient, kind=key)

    def publish_soon(self, event: Event) -> None:
        """Publish a transient event without waiting (progress, heartbeats); failures are only logged."""
        task = asyncio.ensure_future(self.publish(event))
        self._in_flight.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("transient publish failed", error=str(task.exception()))

    async def send(self, command: Command) -> None:
        """Send a command to its one consuming queue, confirmed. Every GenerateImages passes here
        (submit, requeue, hand-back): under affinity routing it goes to its model's queue."""
        key = route = routing_key(command)
        if isinstance(command, GenerateImages) and self.routing == "affinity":
            route = await self._model_route(command.spec.model)
        try:
            await self._publish(self.topology.commands, route, encoder.encode(command), command.command_id, False,
                                kind=key)
        except BrokerUnavailable:
            if route != key:  # its model's queue may be gone (deleted by hand): the next send declares it
                self._model_queues.discard(self.topology.model_queue(command.spec.model))
            raise

    async def declare_model_queues(self, model_ids: Iterable[str]) -> None:
        """Declare the queues of `model_ids` now rather than at their first job (a generator does
        this as it connects, like the stage queues): RabbitMQ 3.10 has lost a quorum queue declared
        a moment before the broker was killed (after the restart every consume and publish on it timed
        out), and a queue that exists before anyone consumes it avoids two first declarations racing."""
        for model_id in model_ids:
            await self._model_route(model_id)

    async def _model_route(self, model_id: str) -> str:
        """The routing key to `model_id`'s queue, declaring and binding the queue the first time."""
        name = self.topology.model_queue(model_id)
        if name not in self._model_queues:
            if self._confirming is None:
                raise BrokerUnavailable("bus is not open")
            try:
                await declare_model_queue(self._confirming, self.topology, model_id)
            except (TimeoutError, *CONNECTION_ERRORS) as exc:
                raise BrokerUnavailable(f"broker unreachable while declaring {name}: {exc}") from exc
            self._model_queues.add(name)
        return topology.generate_images_key(model_id)

    async def send_later(self, command: Command, queue: str, delay: float, arguments: dict[str, Any]) -> None:
        """Park a command in the delay queue `queue` for `delay` seconds, confirmed; the queue
        (declared with `arguments`, which name where it dead-letters to) sends it back when it expires."""
        if queue not in self._delay_queues:
            if self._confirming is None:
                raise BrokerUnavailable("bus is not open")
            await self._confirming.declare_queue(queue, durable=True, arguments=arguments)
            self._delay_queues.add(queue)
        key = routing_key(command)
        await self._publish("", queue, encoder.encode(command), command.command_id, False, kind=key,
                            expiration=max(0.001, delay))

    async def send_back(self, body: bytes, queue: str, *, message_id: str | None, kind: str | None,
                        headers: dict[str, Any]) -> None:
        """Put a parked message back on the queue it came from, confirmed, keeping its id and type."""
        await self._publish("", queue, body, message_id, False, kind=kind, headers=headers)

    async def _publish(self, exchange: str, key: str, body: bytes, message_id: str | None, transient: bool, *,
                       kind: str | None, headers: dict[str, Any] | None = None,
                       expiration: float | None = None) -> None:
        channel = self._transient if transient else self._confirming
        if channel is None:
            raise BrokerUnavailable("bus is not open")
        message = aio_pika.Message(
            body,
            content_type="application/json",
            message_id=message_id,
            type=kind,
            headers=headers,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT if transient else aio_pika.DeliveryMode.PERSISTENT,
            expiration=expiration,
        )
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + NACK_RETRY_SECONDS, 0.1
        while True:
            channel = self._transient if transient else self._confirming
            try:
                ex = self._exchanges[exchange]
                if transient:
                    ex = self._transient_exchanges.get(exchange) or await channel.get_exchange(exchange, ensure=False)
                    self._transient_exchanges[exchange] = ex
                await ex.publish(message, routing_key=key, mandatory=not transient, timeout=PUBLISH_TIMEOUT)
                return
            except aio_pika.exceptions.DeliveryError as exc:
                if not isinstance(exc.frame, Basic.Nack) or loop.time() + delay > deadline:
                    raise BrokerUnavailable(f"broker refused {key}: {exc}") from exc
                # Not a reason to give the message being handled back (each return counts towards
                # its delivery limit, and an election outlasts a few of them): the same message,
                # same id, again; consumers skip the copy a queue that did take it may now hold.
                log.info("broker nacked a publish (a quorum queue electing a leader?); publishing again",
                         key=key, retry_in=delay)
                await asyncio.sleep(delay)
                await self._renew_confirming(channel)
                delay = min(2.0, delay * 2)
            except aio_pika.exceptions.PublishError as exc:
                raise BrokerUnavailable(f"broker refused {key}: {exc}") from exc
            except (TimeoutError, *CONNECTION_ERRORS) as exc:
                raise BrokerUnavailable(f"broker unreachable while publishing {key}: {exc}") from exc

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str, queue: str) -> None:
        """Park a message in the dead-letter queue with the reason, then ack the original. Published
        as every other confirmed message is (a nack while a quorum queue elects a leader is retried)."""
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:2000]
        headers[QUEUE_HEADER] = queue
        try:
            await self._publish(self.topology.dead_letter, queue, message.body, message.message_id, False,
                                kind=message.type, headers=headers)
        except BrokerUnavailable as exc:  # not parked: back to its queue (its delivery limit still counts)
            log.warning("could not dead-letter a message; returned to its queue", queue=queue, error=str(exc))
            await message.nack(requeue=True)
            return
        await message.ack()

    async def consume_raw(
        self, stage: str, callback: Callable[[AbstractIncomingMessage], Awaitable[Any]], *, prefetch: int,
        model: str | None = None,
    ) -> AbstractQueue:
        """Consume a stage's queue (or, with `model`, that model's generator queue) on a channel of
        its own (its prefetch is its own). A model queue consumed again after `stop_consuming`
        reuses its channel."""
        queue = self._model_consumers.get(model) if model is not None else None
        if queue is None:
            channel = await self.connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            # Declared (idempotently, same arguments) on this very channel: a robust channel restores
            # after a reconnect only the queues it declared, and with them their consumers.
            if model is None:
                queue = await channel.declare_queue(self.topology.queue(stage), durable=True,
                                                    arguments=self.topology.queue_arguments(stage))
            else:
                queue = self._model_consumers[model] = await declare_model_queue(channel, self.topology, model)
        tag = await queue.consume(callback, no_ack=False)
        self._consumers.append((queue, tag))
        return queue

    async def stop_consuming(self, queue: AbstractQueue) -> None:
        """Cancel this process's consumer of `queue`: no new messages; those it holds stay its own
        to finish and ack (or hand back)."""
        for held, tag in [c for c in self._consumers if c[0] is queue]:
            self._consumers.remove((held, tag))
            with contextlib.suppress(*CONNECTION_ERRORS):
                await held.cancel(tag)

    async def consume(
        self,
        stage: str,
        handle: Callable[[T], Awaitable[object]],
        *,
        decoder: msgspec.json.Decoder,
        prefetch: int = 8,
        on_failure: Callable[[T, Exception], Awaitable[None]] | None = None,
        model: str | None = None,
    ) -> AbstractQueue:
        """Consume a stage's queue (with `model`: that model's generator queue): decode, call
        `handle`, then ack; dead-letter what fails.

        `on_failure` runs before a failed message is dead-lettered, so that the stage can end the
        job with the reason (an accepted job must never just disappear). When the message asks for
        an answer (`reply_to`), what `handle` returns is encoded and sent back.
        """
        queue_name = self.topology.queue(stage) if model is None else self.topology.model_queue(model)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                item = decoder.decode(message.body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("undecodable message dead-lettered", queue=queue_name, error=str(exc))
                await settle(self.dead_letter(message, f"undecodable: {exc}", queue_name))
                return
            delivery_count.set(int((message.headers or {}).get(DELIVERY_COUNT_HEADER, 0) or 0))
            try:
                answer = await handle(item)
            except Retry as exc:
                log.info("message requeued", queue=queue_name, reason=str(exc))
                await asyncio.sleep(0.5)
                await settle(message.nack(requeue=True))
                return
            except BrokerUnavailable as exc:
                # Our next publish failed: leave the message for redelivery after the reconnect.
                log.warning("broker trouble while handling; message will be redelivered", queue=queue_name, error=str(exc))
                await settle(message.nack(requeue=True))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("handler failed; message dead-lettered", queue=queue_name)
                if on_failure is not None:
                    try:
                        await on_failure(item, exc)
                    except BrokerUnavailable:
                        await settle(message.nack(requeue=True))
                        return
                await settle(self.dead_letter(message, f"{type(exc).__name__}: {exc}", queue_name))
                return
            if message.reply_to and answer is not None:
                await settle(self._reply(message, answer))
            await settle(message.ack())

        return await self.consume_raw(stage, on_message, prefetch=prefetch, model=model)

    async def consumer_count(self, stage: str) -> int:
        """How many processes consume a stage's queue right now (e.g. live generator workers)."""
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(self.topology.queue(stage), passive=True)
            return queue.declaration_result.consumer_count
        finally:
            await channel.close()

    async def queue_depths(self, queues: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(messages ready, consumers) of each queue that exists (for metrics); one channel for all,
        a new one after a queue that does not exist (the broker closes the channel on that)."""
        found: dict[str, tuple[int, int]] = {}
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            for name in queues:
                try:
                    result = (await channel.declare_queue(name, passive=True)).declaration_result
                    found[name] = (result.message_count, result.consumer_count)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    channel = await self.connection.channel(publisher_confirms=False)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return found

    async def request(self, command: Command, timeout: float = 10.0) -> bytes:
        """Send a command and wait for its answer (RabbitMQ's direct reply-to); raises TimeoutError."""
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            answers: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            reply_queue = await channel.get_queue(REPLY_TO, ensure=False)
            await reply_queue.consume(answers.put, no_ack=True)
            commands = await channel.get_exchange(self.topology.commands, ensure=False)
            await commands.publish(
                aio_pika.Message(
                    encoder.encode(command), content_type="application/json", message_id=command.command_id,
                    correlation_id=command.command_id, reply_to=REPLY_TO,
                    type=routing_key(command), expiration=timeout,
                ),
                routing_key=routing_key(command),
                mandatory=False,
            )
            async with asyncio.timeout(timeout):
                while True:
                    answer = await answers.get()
                    if answer.correlation_id == command.command_id:
                        return answer.body
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _reply(self, message: AbstractIncomingMessage, answer: object) -> None:
        reply = aio_pika.Message(encoder.encode(answer), content_type="application/json",
                                 correlation_id=message.correlation_id)
        channel = self._confirming
        await channel.default_exchange.publish(reply, routing_key=message.reply_to, mandatory=False)

    async def subscribe(
        self, keys: Iterable[str], handle: Callable[[Event], Awaitable[None]], *, name: str,
        outlive_disconnects: bool = False,
    ) -> AbstractQueue:
        """A private queue for this process only bound to `keys` on the events exchange: how a
        process follows events it does not own (cancellations, live progress).

        It goes when the process disconnects, unless `outlive_disconnects`: then it keeps
        collecting for a while (topology.FOLLOWER_KEEP_SECONDS) and the reconnected process gets
        what it missed (a worker frozen past its heartbeat must still learn which jobs ended)."""
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=256)
        queue_name = f"{self.topology.namespace}.{name}.{new_id()[:8]}"
        if outlive_disconnects:
            queue = await channel.declare_queue(queue_name, arguments=topology.follower_arguments())
        else:
            queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        events = await channel.get_exchange(self.topology.events, ensure=False)
        for key in keys:
            await queue.bind(events, routing_key=key)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                await handle(event_decoder.decode(message.body))
            except Exception:
                log.exception("subscriber failed on a message; skipped", queue=queue.name)
            await settle(message.ack())

        tag = await queue.consume(on_message, no_ack=False)
        self._consumers.append((queue, tag))
        return queue

    async def cancel_consumers(self) -> None:
        """Stop receiving new messages (those already delivered stay ours to finish or return)."""
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)

    async def close(self) -> None:
        await self.cancel_consumers()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=2)
        with contextlib.suppress(Exception):
            await self.connection.close()


async def settle(action: Awaitable[Any]) -> None:
    """Ack, nack or dead-letter; if the channel is gone the broker redelivers anyway, so carry on."""
    with contextlib.suppress(*CONNECTION_ERRORS):
        await action


async def declare_topology(channel: AbstractChannel, topo: Topology) -> None:
    """Declare every exchange, queue and binding; safe to run again and from every service."""
    events = await channel.declare_exchange(topo.events, aio_pika.ExchangeType.TOPIC, durable=True)
    commands = await channel.declare_exchange(topo.commands, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_exchange(topo.dead_letter, aio_pika.ExchangeType.FANOUT, durable=True)
    for name in (topo.dead_letters, topo.reaper_dead_letters):
        parked = await channel.declare_queue(name, durable=True, arguments=topo.queue_arguments(topo.stage(name)))
        await parked.bind(dead, routing_key="")
    exchanges = {topology.EVENTS: events, topology.COMMANDS: commands}
    for stage, (exchange, keys) in topology.STAGE_BINDINGS.items():
        queue = await channel.declare_queue(topo.queue(stage), durable=True, arguments=topo.queue_arguments(stage))
        for key in keys:
            await queue.bind(exchanges[exchange], routing_key=key)


async def declare_model_queue(channel: AbstractChannel, topo: Topology, model_id: str) -> AbstractQueue:
    """Declare model `model_id`'s generator queue and bind it on the commands exchange (affinity
    routing); idempotent, from senders and consumers alike."""
    queue = await channel.declare_queue(topo.model_queue(model_id), durable=True,
                                        arguments=topo.model_queue_arguments(model_id))
    await queue.bind(topo.commands, routing_key=topology.generate_images_key(model_id))
    return queue

