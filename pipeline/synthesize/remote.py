"""A teacher behind an external OpenAI-compatible endpoint (a tenant secret's URL and key).

Answers (distillation, Self-Instruct's answers, preference samples) are asked of
``/chat/completions`` with the templated prompt as the user turn, so the endpoint applies its
own chat template. Self-Instruct's instruction requests are raw continuations ("Task 4:") and go
to ``/completions``, as the paper asked GPT-3. Every call carries the job's sampling settings and
the generation's seed as ``seed`` (endpoints that honour it are then reproducible). The key lives
in the :class:`~pipeline.parts.endpoints.Endpoint` only, whose ``repr`` leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.parts.endpoints import Endpoint, HiddenHost, chat_text, completion_text, post

TIMEOUT_S = 120.0
DOMAIN = "synthesize"


@dataclass
class RemoteTeacher:
    endpoint: Endpoint
    config: SynthesizeConfig
    backoff_s: float = 1.0
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=TIMEOUT_S))
    hidden: HiddenHost = field(init=False)

    def __post_init__(self) -> None:
        self.hidden = HiddenHost(self.endpoint)

    def generate(self, text: str, seed: int, *, raw: bool) -> tuple[str, int]:
        """The endpoint's answer to ``text`` and the tokens it reports having generated.

        Raises:
            PipelineError: ``synthesize.endpoint_refused`` (the key), ``.endpoint_unreachable``
                or ``.endpoint_failed`` (see :func:`pipeline.parts.endpoints.post`).
        """
        cfg = self.config
        sampling = {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                    "top_p": cfg.top_p, "seed": seed}  # fmt: skip
        if raw:
            body = {"prompt": text, **sampling}
            answer = post(self.client, self.endpoint, "/completions", body,
                          domain=DOMAIN, backoff_s=self.backoff_s)  # fmt: skip
            return completion_text(answer, domain=DOMAIN)
        body = {"messages": [{"role": "user", "content": text}], **sampling}
        answer = post(self.client, self.endpoint, "/chat/completions", body,
                      domain=DOMAIN, backoff_s=self.backoff_s)  # fmt: skip
        return chat_text(answer, domain=DOMAIN)

    def close(self) -> None:
        self.client.close()
        self.hidden.remove()
