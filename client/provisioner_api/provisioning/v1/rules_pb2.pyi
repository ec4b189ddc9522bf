from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
RULES_FIELD_NUMBER: _ClassVar[int]
rules: _descriptor.FieldDescriptor

class FieldRules(_message.Message):
    __slots__ = ("string", "repeated", "int32")
    STRING_FIELD_NUMBER: _ClassVar[int]
    REPEATED_FIELD_NUMBER: _ClassVar[int]
    INT32_FIELD_NUMBER: _ClassVar[int]
    string: StringRules
    repeated: RepeatedRules
    int32: Int32Rules
    def __init__(self, string: _Optional[_Union[StringRules, _Mapping]] = ..., repeated: _Optional[_Union[RepeatedRules, _Mapping]] = ..., int32: _Optional[_Union[Int32Rules, _Mapping]] = ...) -> None: ...

class StringRules(_message.Message):
    __slots__ = ("min_len", "max_len", "pattern", "not_in", "not_contains", "printable", "trimmed", "email", "uuid", "ignore_empty", "description")
    MIN_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    IN_FIELD_NUMBER: _ClassVar[int]
    NOT_IN_FIELD_NUMBER: _ClassVar[int]
    NOT_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    PRINTABLE_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EMPTY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    min_len: int
    max_len: int
    pattern: str
    not_in: _containers.RepeatedScalarFieldContainer[str]
    not_contains: str
    printable: bool
    trimmed: bool
    email: bool
    uuid: bool
    ignore_empty: bool
    description: str
    def __init__(self, min_len: _Optional[int] = ..., max_len: _Optional[int] = ..., pattern: _Optional[str] = ..., not_in: _Optional[_Iterable[str]] = ..., not_contains: _Optional[str] = ..., printable: _Optional[bool] = ..., trimmed: _Optional[bool] = ..., email: _Optional[bool] = ..., uuid: _Optional[bool] = ..., ignore_empty: _Optional[bool] = ..., description: _Optional[str] = ..., **kwargs) -> None: ...

class RepeatedRules(_message.Message):
    __slots__ = ("min_items", "max_items", "unique", "items")
    MIN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    min_items: int
    max_items: int
    unique: bool
    items: StringRules
    def __init__(self, min_items: _Optional[int] = ..., max_items: _Optional[int] = ..., unique: _Optional[bool] = ..., items: _Optional[_Union[StringRules, _Mapping]] = ...) -> None: ...

class Int32Rules(_message.Message):
    __slots__ = ("gte", "lte", "description")
    GTE_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    gte: int
    lte: int
    description: str
    def __init__(self, gte: _Optional[int] = ..., lte: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...
