"""Kafka's Metadata request, version 10: the one that carries topic ids.

aiokafka speaks Metadata up to version 5, which has no topic id. The topic id is what tells a topic
from the topic of the same name that replaced it, so the Kafka bus derives its epoch from it (see
docs/cursor.md). These are the request and response schemas from the Kafka protocol, built from
aiokafka's own protocol types; aiokafka negotiates and sends them like any of its requests.
"""

from __future__ import annotations

import uuid
from io import BytesIO
from typing import Any, ClassVar

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

NO_TOPIC_ID = uuid.UUID(int=0)


class Uuid(AbstractType[uuid.UUID]):
    @classmethod
    def encode(cls, value: uuid.UUID | None) -> bytes:
        return (value or NO_TOPIC_ID).bytes

    @classmethod
    def decode(cls, data: BytesIO) -> uuid.UUID:
        return uuid.UUID(bytes=data.read(16))


_PARTITION = (
    ("error_code", Int16),
    ("partition_index", Int32),
    ("leader_id", Int32),
    ("leader_epoch", Int32),
    ("replica_nodes", CompactArray(Int32)),
    ("isr_nodes", CompactArray(Int32)),
    ("offline_replicas", CompactArray(Int32)),
    ("tags", TaggedFields),
)


class MetadataResponse_v10(Response):  # noqa: N801 - the protocol's own naming
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", Uuid),
                ("is_internal", Boolean),
                ("partitions", CompactArray(*_PARTITION)),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicMetadataRequest(Request[MetadataRequest_v10]):
    """Metadata of some topics, with their ids; never creates a topic."""

    API_KEY: ClassVar[int] = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[MetadataRequest_v10]) -> MetadataRequest_v10:
        topics: list[tuple[None, str, dict[int, bytes]]] = [(None, n, {}) for n in self.topics]
        return request_struct_class(topics, False, False, False, {})


def topic_ids(response: Any) -> dict[str, tuple[int, uuid.UUID, int]]:
    """``{topic: (error_code, topic_id, partition_count)}`` from a version 10 response."""
    found: dict[str, tuple[int, uuid.UUID, int]] = {}
    for topic in response.to_object()["topics"]:
        found[topic["name"]] = (topic["error_code"], topic["topic_id"], len(topic["partitions"]))
    return found
