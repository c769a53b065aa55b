"""Request and response bodies of the OpenAI API, as pydantic models.

Types are strict (``"max_tokens": "5"`` is a 400, as with OpenAI), and fields OpenAI defines
that aigc does not use (``user``, ``presence_penalty``...) are ignored, as are unknown ones.
Beyond OpenAI, as vLLM does, requests accept ``top_k`` and ``repetition_penalty``.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Stop = Union[str, list[str], None]


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(Request):
    include_usage: bool = False


class SamplingFields(Request):
    """What completions and chat share."""

    model: str
    temperature: float = Field(1.0, ge=0, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, description="vLLM's extension: sample among the k likeliest tokens")
    repetition_penalty: float = Field(1.0, gt=0, description="vLLM's extension (CTRL's penalty); 1: none")
    n: int = Field(1, ge=1, description="choices per prompt (the server caps it: --max-n)")
    stop: Stop = Field(None, description="up to 4 strings; the text ends before the first one met")
    seed: int | None = Field(None, description="the same seed and request give the same text")
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str]]
    max_tokens: int = Field(16, ge=1, description="tokens to generate per choice (capped: --max-tokens-cap)")
    logprobs: int | None = Field(None, ge=0, le=5, description="log-probabilities of the k likeliest tokens")
    echo: bool = Field(False, description="start the text with the prompt")


class TextPart(Request):
    type: Literal["text"]
    text: str


class Message(Request):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default: the server's --max-tokens-cap")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)


class ImageRequest(Request):
    model: str
    prompt: str = Field("", description="names a class: '7', 'seven', 'a handwritten 7' or a class name")
    n: int = Field(1, ge=1)
    response_format: Literal["b64_json"] | None = Field(None, description="only b64_json: PNG images inline")
    size: str | None = Field(None, description="WIDTHxHEIGHT; must be the model's own size")
    seed: int | None = None


# ---------------------------------------------------------------- responses

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Image(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageResponse(BaseModel):
    created: int
    data: list[Image]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aigc"
    kind: Literal["gpt", "gan"]
    context_length: int | None = Field(None, description="GPT: tokens of context")
    parameters: int
    classes: list[str] | None = Field(None, description="GAN: the classes a prompt may name")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
