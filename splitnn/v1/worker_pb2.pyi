from splitnn.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LossKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOSS_KIND_UNSPECIFIED: _ClassVar[LossKind]
    LOSS_KIND_SUM_SQUARED_ERROR: _ClassVar[LossKind]
    LOSS_KIND_MEAN_SQUARED_ERROR: _ClassVar[LossKind]
    LOSS_KIND_CROSS_ENTROPY: _ClassVar[LossKind]
    LOSS_KIND_BINARY_CROSS_ENTROPY: _ClassVar[LossKind]
    LOSS_KIND_BINARY_CROSS_ENTROPY_WITH_LOGITS: _ClassVar[LossKind]

class OptimizerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_KIND_UNSPECIFIED: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_SGD: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_ADAM: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_ADAMW: _ClassVar[OptimizerKind]

class ForwardMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORWARD_MODE_UNSPECIFIED: _ClassVar[ForwardMode]
    FORWARD_MODE_TRAIN: _ClassVar[ForwardMode]
    FORWARD_MODE_EVAL: _ClassVar[ForwardMode]

class WireFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WIRE_FORMAT_UNSPECIFIED: _ClassVar[WireFormat]
    WIRE_FORMAT_FLOAT16: _ClassVar[WireFormat]
    WIRE_FORMAT_BFLOAT16: _ClassVar[WireFormat]
    WIRE_FORMAT_INT8: _ClassVar[WireFormat]
LOSS_KIND_UNSPECIFIED: LossKind
LOSS_KIND_SUM_SQUARED_ERROR: LossKind
LOSS_KIND_MEAN_SQUARED_ERROR: LossKind
LOSS_KIND_CROSS_ENTROPY: LossKind
LOSS_KIND_BINARY_CROSS_ENTROPY: LossKind
LOSS_KIND_BINARY_CROSS_ENTROPY_WITH_LOGITS: LossKind
OPTIMIZER_KIND_UNSPECIFIED: OptimizerKind
OPTIMIZER_KIND_SGD: OptimizerKind
OPTIMIZER_KIND_ADAM: OptimizerKind
OPTIMIZER_KIND_ADAMW: OptimizerKind
FORWARD_MODE_UNSPECIFIED: ForwardMode
FORWARD_MODE_TRAIN: ForwardMode
FORWARD_MODE_EVAL: ForwardMode
WIRE_FORMAT_UNSPECIFIED: WireFormat
WIRE_FORMAT_FLOAT16: WireFormat
WIRE_FORMAT_BFLOAT16: WireFormat
WIRE_FORMAT_INT8: WireFormat

class ArgValue(_message.Message):
    __slots__ = ("int_value", "float_value", "bool_value", "string_value", "ints_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INTS_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    float_value: float
    bool_value: bool
    string_value: str
    ints_value: IntList
    def __init__(self, int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ..., ints_value: _Optional[_Union[IntList, _Mapping]] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class LayerSpec(_message.Message):
    __slots__ = ("type", "args", "layers", "shortcut")
    class ArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ArgValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ArgValue, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SHORTCUT_FIELD_NUMBER: _ClassVar[int]
    type: str
    args: _containers.MessageMap[str, ArgValue]
    layers: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    shortcut: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    def __init__(self, type: _Optional[str] = ..., args: _Optional[_Mapping[str, ArgValue]] = ..., layers: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ..., shortcut: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("kind", "lr", "momentum", "dampening", "weight_decay", "nesterov", "beta1", "beta2", "eps", "amsgrad")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    DAMPENING_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    AMSGRAD_FIELD_NUMBER: _ClassVar[int]
    kind: OptimizerKind
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    beta1: float
    beta2: float
    eps: float
    amsgrad: bool
    def __init__(self, kind: _Optional[_Union[OptimizerKind, str]] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., dampening: _Optional[float] = ..., weight_decay: _Optional[float] = ..., nesterov: _Optional[bool] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., eps: _Optional[float] = ..., amsgrad: _Optional[bool] = ...) -> None: ...

class SegmentSpec(_message.Message):
    __slots__ = ("index", "layers", "optimizer")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    index: int
    layers: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    optimizer: OptimizerSpec
    def __init__(self, index: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ...) -> None: ...

class LoadSegmentRequest(_message.Message):
    __slots__ = ("run_id", "spec", "state", "replace", "callers", "peers")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    CALLERS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    spec: SegmentSpec
    state: _tensor_pb2.BlobChunk
    replace: bool
    callers: _containers.RepeatedScalarFieldContainer[str]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, run_id: _Optional[str] = ..., spec: _Optional[_Union[SegmentSpec, _Mapping]] = ..., state: _Optional[_Union[_tensor_pb2.BlobChunk, _Mapping]] = ..., replace: _Optional[bool] = ..., callers: _Optional[_Iterable[str]] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("host", "address", "server_name", "data_address")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    host: str
    address: str
    server_name: str
    data_address: str
    def __init__(self, host: _Optional[str] = ..., address: _Optional[str] = ..., server_name: _Optional[str] = ..., data_address: _Optional[str] = ...) -> None: ...

class LoadSegmentResponse(_message.Message):
    __slots__ = ("index", "parameter_count")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    index: int
    parameter_count: int
    def __init__(self, index: _Optional[int] = ..., parameter_count: _Optional[int] = ...) -> None: ...

class ExportSegmentRequest(_message.Message):
    __slots__ = ("run_id", "index")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    index: int
    def __init__(self, run_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ExportSegmentResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _tensor_pb2.BlobChunk
    def __init__(self, state: _Optional[_Union[_tensor_pb2.BlobChunk, _Mapping]] = ...) -> None: ...

class DropSegmentRequest(_message.Message):
    __slots__ = ("run_id", "index")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    index: int
    def __init__(self, run_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class DropSegmentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DataSource(_message.Message):
    __slots__ = ("dataset", "indices")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dataset: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ...) -> None: ...

class LossSpec(_message.Message):
    __slots__ = ("kind", "dataset", "indices", "scale")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    kind: LossKind
    dataset: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    scale: float
    def __init__(self, kind: _Optional[_Union[LossKind, str]] = ..., dataset: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., scale: _Optional[float] = ...) -> None: ...

class LossResult(_message.Message):
    __slots__ = ("loss", "correct", "count")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    loss: float
    correct: int
    count: int
    def __init__(self, loss: _Optional[float] = ..., correct: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("run_id", "segments", "batch_id", "mode", "input", "data", "loss", "step", "want_output", "micro_batch", "chain", "wire")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WANT_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    segments: _containers.RepeatedScalarFieldContainer[int]
    batch_id: int
    mode: ForwardMode
    input: _tensor_pb2.TensorChunk
    data: DataSource
    loss: LossSpec
    step: bool
    want_output: bool
    micro_batch: int
    chain: _containers.RepeatedCompositeFieldContainer[ChainHop]
    wire: WireFormat
    def __init__(self, run_id: _Optional[str] = ..., segments: _Optional[_Iterable[int]] = ..., batch_id: _Optional[int] = ..., mode: _Optional[_Union[ForwardMode, str]] = ..., input: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., data: _Optional[_Union[DataSource, _Mapping]] = ..., loss: _Optional[_Union[LossSpec, _Mapping]] = ..., step: _Optional[bool] = ..., want_output: _Optional[bool] = ..., micro_batch: _Optional[int] = ..., chain: _Optional[_Iterable[_Union[ChainHop, _Mapping]]] = ..., wire: _Optional[_Union[WireFormat, str]] = ...) -> None: ...

class ChainHop(_message.Message):
    __slots__ = ("host", "segments")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    host: str
    segments: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host: _Optional[str] = ..., segments: _Optional[_Iterable[int]] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("batch_id", "output", "input_grad", "loss", "micro_batch")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_GRAD_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    output: _tensor_pb2.TensorChunk
    input_grad: _tensor_pb2.TensorChunk
    loss: LossResult
    micro_batch: int
    def __init__(self, batch_id: _Optional[int] = ..., output: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., input_grad: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., loss: _Optional[_Union[LossResult, _Mapping]] = ..., micro_batch: _Optional[int] = ...) -> None: ...

class BackwardRequest(_message.Message):
    __slots__ = ("run_id", "segments", "batch_id", "output_grad", "step", "micro_batch", "wire")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_GRAD_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    segments: _containers.RepeatedScalarFieldContainer[int]
    batch_id: int
    output_grad: _tensor_pb2.TensorChunk
    step: bool
    micro_batch: int
    wire: WireFormat
    def __init__(self, run_id: _Optional[str] = ..., segments: _Optional[_Iterable[int]] = ..., batch_id: _Optional[int] = ..., output_grad: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., step: _Optional[bool] = ..., micro_batch: _Optional[int] = ..., wire: _Optional[_Union[WireFormat, str]] = ...) -> None: ...

class BackwardResponse(_message.Message):
    __slots__ = ("batch_id", "input_grad", "micro_batch")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_GRAD_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    input_grad: _tensor_pb2.TensorChunk
    micro_batch: int
    def __init__(self, batch_id: _Optional[int] = ..., input_grad: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., micro_batch: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("run_id", "segments", "batch_id", "micro_batch")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    segments: _containers.RepeatedScalarFieldContainer[int]
    batch_id: int
    micro_batch: int
    def __init__(self, run_id: _Optional[str] = ..., segments: _Optional[_Iterable[int]] = ..., batch_id: _Optional[int] = ..., micro_batch: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("batch_id", "micro_batch")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    micro_batch: int
    def __init__(self, batch_id: _Optional[int] = ..., micro_batch: _Optional[int] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("forward", "backward", "step")
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    forward: ForwardRequest
    backward: BackwardRequest
    step: StepRequest
    def __init__(self, forward: _Optional[_Union[ForwardRequest, _Mapping]] = ..., backward: _Optional[_Union[BackwardRequest, _Mapping]] = ..., step: _Optional[_Union[StepRequest, _Mapping]] = ...) -> None: ...

class ExchangeResponse(_message.Message):
    __slots__ = ("forward", "backward", "step")
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    forward: ForwardResponse
    backward: BackwardResponse
    step: StepResponse
    def __init__(self, forward: _Optional[_Union[ForwardResponse, _Mapping]] = ..., backward: _Optional[_Union[BackwardResponse, _Mapping]] = ..., step: _Optional[_Union[StepResponse, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "rows", "x_shape", "x_dtype", "y_dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    X_SHAPE_FIELD_NUMBER: _ClassVar[int]
    X_DTYPE_FIELD_NUMBER: _ClassVar[int]
    Y_DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: int
    x_shape: _containers.RepeatedScalarFieldContainer[int]
    x_dtype: str
    y_dtype: str
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[int] = ..., x_shape: _Optional[_Iterable[int]] = ..., x_dtype: _Optional[str] = ..., y_dtype: _Optional[str] = ...) -> None: ...

class SegmentInfo(_message.Message):
    __slots__ = ("run_id", "index", "parameter_count", "pending_batches")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    PENDING_BATCHES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    index: int
    parameter_count: int
    pending_batches: int
    def __init__(self, run_id: _Optional[str] = ..., index: _Optional[int] = ..., parameter_count: _Optional[int] = ..., pending_batches: _Optional[int] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("name", "datasets", "segments", "bytes_received", "bytes_sent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    bytes_received: int
    bytes_sent: int
    def __init__(self, name: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ..., segments: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., bytes_received: _Optional[int] = ..., bytes_sent: _Optional[int] = ...) -> None: ...

class Stage(_message.Message):
    __slots__ = ("host", "segments", "address", "server_name", "data_address")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    host: str
    segments: _containers.RepeatedScalarFieldContainer[int]
    address: str
    server_name: str
    data_address: str
    def __init__(self, host: _Optional[str] = ..., segments: _Optional[_Iterable[int]] = ..., address: _Optional[str] = ..., server_name: _Optional[str] = ..., data_address: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "indices")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, batch_id: _Optional[int] = ..., indices: _Optional[_Iterable[int]] = ...) -> None: ...

class DriveRequest(_message.Message):
    __slots__ = ("run_id", "stages", "loss", "dataset", "batches", "mode", "micro_batches", "chain", "wire", "quiet")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCHES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    QUIET_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    loss: LossKind
    dataset: str
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    mode: ForwardMode
    micro_batches: int
    chain: bool
    wire: WireFormat
    quiet: bool
    def __init__(self, run_id: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., loss: _Optional[_Union[LossKind, str]] = ..., dataset: _Optional[str] = ..., batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ..., mode: _Optional[_Union[ForwardMode, str]] = ..., micro_batches: _Optional[int] = ..., chain: _Optional[bool] = ..., wire: _Optional[_Union[WireFormat, str]] = ..., quiet: _Optional[bool] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("batch_id", "loss")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    loss: LossResult
    def __init__(self, batch_id: _Optional[int] = ..., loss: _Optional[_Union[LossResult, _Mapping]] = ...) -> None: ...

class DriveResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ...) -> None: ...
