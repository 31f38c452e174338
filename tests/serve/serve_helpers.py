"""For the serve tests: the real app and engine under uvicorn, in a thread, on 127.0.0.1 and
a free port; a Qwen-style tools template. Nothing touches the network."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

QWEN_TOOLS = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n\n"
    "For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- elif message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{%- if message.tool_calls %}{%- for tc in message.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}{%- endif %}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
"""A Qwen-style chat template that shows tools to the model and writes its tool calls."""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_ANSWER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'


@dataclass
class RunningServer:
    url: str
    engine: Any
    models: Any
    server: Any
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kw: Any):
        import openai

        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.base_url, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.engine.close(timeout=5)


def start_server(models: Any, *, api_key: str | None = None, **engine_kw: Any) -> RunningServer:
    import uvicorn

    from lora_finetune.serve.app import create_app
    from lora_finetune.serve.engine import Engine
    from lora_finetune.serve.server import bind

    engine_kw.setdefault("batch_window_s", 0.05)
    engine = Engine(models, **engine_kw).start()
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(engine, api_key=api_key, default_max_tokens=32)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", engine, models, server, thread)
