from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]

class VerifyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFY_MODE_UNSPECIFIED: _ClassVar[VerifyMode]
    VERIFY_MODE_SPECULATIVE: _ClassVar[VerifyMode]
    VERIFY_MODE_TOPK: _ClassVar[VerifyMode]
    VERIFY_MODE_GREEDY: _ClassVar[VerifyMode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_INT32: DType
VERIFY_MODE_UNSPECIFIED: VerifyMode
VERIFY_MODE_SPECULATIVE: VerifyMode
VERIFY_MODE_TOPK: VerifyMode
VERIFY_MODE_GREEDY: VerifyMode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ScoreSequence(_message.Message):
    __slots__ = ("token_ids", "score_from", "candidate_ids")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FROM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: Tensor
    score_from: int
    candidate_ids: Tensor
    def __init__(self, token_ids: _Optional[_Union[Tensor, _Mapping]] = ..., score_from: _Optional[int] = ..., candidate_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PackedScoreSequences(_message.Message):
    __slots__ = ("token_ids", "lengths", "score_from", "candidate_ids")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FROM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: Tensor
    lengths: Tensor
    score_from: Tensor
    candidate_ids: Tensor
    def __init__(self, token_ids: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Union[Tensor, _Mapping]] = ..., score_from: _Optional[_Union[Tensor, _Mapping]] = ..., candidate_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("sequences", "top_k", "temperature", "logprob_dtype", "packed", "text")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[ScoreSequence]
    top_k: int
    temperature: float
    logprob_dtype: DType
    packed: PackedScoreSequences
    text: _containers.RepeatedCompositeFieldContainer[TextSequence]
    def __init__(self, sequences: _Optional[_Iterable[_Union[ScoreSequence, _Mapping]]] = ..., top_k: _Optional[int] = ..., temperature: _Optional[float] = ..., logprob_dtype: _Optional[_Union[DType, str]] = ..., packed: _Optional[_Union[PackedScoreSequences, _Mapping]] = ..., text: _Optional[_Iterable[_Union[TextSequence, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class TextSequence(_message.Message):
    __slots__ = ("messages", "prompt", "completion", "end_of_turn")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    prompt: str
    completion: str
    end_of_turn: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., prompt: _Optional[str] = ..., completion: _Optional[str] = ..., end_of_turn: _Optional[bool] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("topk_ids", "topk_logprobs", "token_logprobs", "tail_logprobs", "candidate_logprobs")
    TOPK_IDS_FIELD_NUMBER: _ClassVar[int]
    TOPK_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TAIL_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    topk_ids: Tensor
    topk_logprobs: Tensor
    token_logprobs: Tensor
    tail_logprobs: Tensor
    candidate_logprobs: Tensor
    def __init__(self, topk_ids: _Optional[_Union[Tensor, _Mapping]] = ..., topk_logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., token_logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., tail_logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., candidate_logprobs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "packed", "offsets", "token_ids", "char_spans")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAR_SPANS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    packed: ScoreResult
    offsets: Tensor
    token_ids: Tensor
    char_spans: Tensor
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ..., packed: _Optional[_Union[ScoreResult, _Mapping]] = ..., offsets: _Optional[_Union[Tensor, _Mapping]] = ..., token_ids: _Optional[_Union[Tensor, _Mapping]] = ..., char_spans: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class VerifySequence(_message.Message):
    __slots__ = ("prefix_ids", "draft_ids", "draft_probs", "draft_topk_ids", "session_key", "end_session")
    PREFIX_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOPK_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    END_SESSION_FIELD_NUMBER: _ClassVar[int]
    prefix_ids: Tensor
    draft_ids: Tensor
    draft_probs: Tensor
    draft_topk_ids: Tensor
    session_key: str
    end_session: bool
    def __init__(self, prefix_ids: _Optional[_Union[Tensor, _Mapping]] = ..., draft_ids: _Optional[_Union[Tensor, _Mapping]] = ..., draft_probs: _Optional[_Union[Tensor, _Mapping]] = ..., draft_topk_ids: _Optional[_Union[Tensor, _Mapping]] = ..., session_key: _Optional[str] = ..., end_session: _Optional[bool] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("sequences", "mode", "temperature", "seed", "accept_top_k", "top_k", "logprob_dtype")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_DTYPE_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[VerifySequence]
    mode: VerifyMode
    temperature: float
    seed: int
    accept_top_k: int
    top_k: int
    logprob_dtype: DType
    def __init__(self, sequences: _Optional[_Iterable[_Union[VerifySequence, _Mapping]]] = ..., mode: _Optional[_Union[VerifyMode, str]] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., accept_top_k: _Optional[int] = ..., top_k: _Optional[int] = ..., logprob_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class VerifyResult(_message.Message):
    __slots__ = ("num_accepted", "next_token", "accept_probs", "scores")
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_PROBS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    num_accepted: int
    next_token: int
    accept_probs: Tensor
    scores: ScoreResult
    def __init__(self, num_accepted: _Optional[int] = ..., next_token: _Optional[int] = ..., accept_probs: _Optional[_Union[Tensor, _Mapping]] = ..., scores: _Optional[_Union[ScoreResult, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VerifyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[VerifyResult, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt_ids", "num_samples", "temperature", "top_p", "max_new_tokens", "stop_token_ids", "seed", "logprob_dtype", "return_text")
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    prompt_ids: _containers.RepeatedCompositeFieldContainer[Tensor]
    num_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    seed: int
    logprob_dtype: DType
    return_text: bool
    def __init__(self, prompt_ids: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., num_samples: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., seed: _Optional[int] = ..., logprob_dtype: _Optional[_Union[DType, str]] = ..., return_text: _Optional[bool] = ...) -> None: ...

class GenerateSample(_message.Message):
    __slots__ = ("prompt_index", "token_ids", "token_logprobs", "finish_reason", "text")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    token_ids: Tensor
    token_logprobs: Tensor
    finish_reason: FinishReason
    text: str
    def __init__(self, prompt_index: _Optional[int] = ..., token_ids: _Optional[_Union[Tensor, _Mapping]] = ..., token_logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[GenerateSample]
    def __init__(self, samples: _Optional[_Iterable[_Union[GenerateSample, _Mapping]]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpecialTokens(_message.Message):
    __slots__ = ("bos", "eos", "pad", "unk", "eos_ids")
    BOS_FIELD_NUMBER: _ClassVar[int]
    EOS_FIELD_NUMBER: _ClassVar[int]
    PAD_FIELD_NUMBER: _ClassVar[int]
    UNK_FIELD_NUMBER: _ClassVar[int]
    EOS_IDS_FIELD_NUMBER: _ClassVar[int]
    bos: int
    eos: int
    pad: int
    unk: int
    eos_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bos: _Optional[int] = ..., eos: _Optional[int] = ..., pad: _Optional[int] = ..., unk: _Optional[int] = ..., eos_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("score_candidates", "verify", "generate", "float16_logprobs", "score_temperature", "verify_speculative", "generate_temperature", "verify_sessions", "score_text")
    SCORE_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    FLOAT16_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SCORE_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    GENERATE_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    SCORE_TEXT_FIELD_NUMBER: _ClassVar[int]
    score_candidates: bool
    verify: bool
    generate: bool
    float16_logprobs: bool
    score_temperature: bool
    verify_speculative: bool
    generate_temperature: bool
    verify_sessions: bool
    score_text: bool
    def __init__(self, score_candidates: _Optional[bool] = ..., verify: _Optional[bool] = ..., generate: _Optional[bool] = ..., float16_logprobs: _Optional[bool] = ..., score_temperature: _Optional[bool] = ..., verify_speculative: _Optional[bool] = ..., generate_temperature: _Optional[bool] = ..., verify_sessions: _Optional[bool] = ..., score_text: _Optional[bool] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_id", "backend", "vocab_size", "tokenizer_size", "tokenizer_fingerprint", "special_tokens", "max_context", "max_top_k", "max_draft_tokens", "max_batch_tokens", "max_message_bytes", "features", "model_dtype", "server_version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MODEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    backend: str
    vocab_size: int
    tokenizer_size: int
    tokenizer_fingerprint: str
    special_tokens: SpecialTokens
    max_context: int
    max_top_k: int
    max_draft_tokens: int
    max_batch_tokens: int
    max_message_bytes: int
    features: Features
    model_dtype: str
    server_version: str
    def __init__(self, model_id: _Optional[str] = ..., backend: _Optional[str] = ..., vocab_size: _Optional[int] = ..., tokenizer_size: _Optional[int] = ..., tokenizer_fingerprint: _Optional[str] = ..., special_tokens: _Optional[_Union[SpecialTokens, _Mapping]] = ..., max_context: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_draft_tokens: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., features: _Optional[_Union[Features, _Mapping]] = ..., model_dtype: _Optional[str] = ..., server_version: _Optional[str] = ...) -> None: ...
