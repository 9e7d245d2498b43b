from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("trace_id", "received_unix_nano", "traces_data", "span_count", "start_unix_nano", "end_unix_nano", "has_error", "root")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    TRACES_DATA_FIELD_NUMBER: _ClassVar[int]
    SPAN_COUNT_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    HAS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    trace_id: bytes
    received_unix_nano: int
    traces_data: bytes
    span_count: int
    start_unix_nano: int
    end_unix_nano: int
    has_error: bool
    root: Root
    def __init__(self, trace_id: _Optional[bytes] = ..., received_unix_nano: _Optional[int] = ..., traces_data: _Optional[bytes] = ..., span_count: _Optional[int] = ..., start_unix_nano: _Optional[int] = ..., end_unix_nano: _Optional[int] = ..., has_error: _Optional[bool] = ..., root: _Optional[_Union[Root, _Mapping]] = ...) -> None: ...

class Root(_message.Message):
    __slots__ = ("service", "name", "start_unix_nano", "end_unix_nano")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    service: str
    name: str
    start_unix_nano: int
    end_unix_nano: int
    def __init__(self, service: _Optional[str] = ..., name: _Optional[str] = ..., start_unix_nano: _Optional[int] = ..., end_unix_nano: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...
