"""A local HTTP replay of the providers' batch endpoints, for tests with the real openai / anthropic SDKs.

`BatchReplay` serves, on 127.0.0.1, OpenAI's files + batches endpoints (base_url `.../v1`) and
Anthropic's message batches (base_url `...`), in the response shapes of the providers' API
references. Batches stay in progress until the test ends them (`finish`): answered by `answer(body)`,
with chosen requests errored, or expired with only some done. Every request it got is in `log`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import HOT

Answer = Callable[[dict], str]  # a request body (OpenAI chat completion or Anthropic params) -> answer text


def months_answer(body: dict) -> str:
    """Explanations: "months of the year"; JSON simulations: 9 on a month token, else 0."""
    last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    m = re.search(r"Tokens \(one per line\):\n(.*)Give exactly (\d+) integers", last, re.S)
    if not m:
        return "months of the year"
    tokens = m.group(1).split("\n")[: int(m.group(2))]
    return json.dumps([9 if t in HOT else 0 for t in tokens])


class BatchReplay:
    def __init__(self, answer: Answer = months_answer):
        self.answer = answer
        self.files: dict[str, str] = {}
        self.batches: dict[str, dict] = {}  # id -> {"kind", "open", "requests": [(custom_id, body)], ...}
        self.log: list[tuple[str, str]] = []
        self._n = 0
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                replay.log.append(("GET", self.path))
                replay._get(self)

            def do_POST(self) -> None:  # noqa: N802
                replay.log.append(("POST", self.path))
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                replay._post(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:04d}"

    # -- what a test does -------------------------------------------------------------------------
    def submitted(self, kind: str | None = None) -> list[str]:
        """Batch ids, in order of submission (of `kind`: openai / anthropic)."""
        return [b for b, v in self.batches.items() if kind in (None, v["kind"])]

    def requests(self, batch_id: str) -> list[tuple[str, dict]]:
        return self.batches[batch_id]["requests"]

    def finish(
        self,
        batch_id: str | None = None,
        *,
        errored: set[int] = frozenset(),
        expire_after: int | None = None,
        answer: Answer | None = None,
    ) -> None:
        """End a batch (default: every open one): each request answered, except those at the indices
        in `errored` (a server error); `expire_after=k`: it expired with only its first k requests done."""
        ids = [batch_id] if batch_id else [b for b, v in self.batches.items() if v["open"]]
        for bid in ids:
            b = self.batches[bid]
            results = {}
            for i, (cid, body) in enumerate(b["requests"]):
                if expire_after is not None and i >= expire_after:
                    continue
                results[cid] = None if i in errored else (answer or self.answer)(body)
            b["results"], b["open"] = results, False
            b["expired"] = expire_after is not None

    # -- the HTTP side ----------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, obj: dict | str, status: int = 200) -> None:
        data = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
        h.send_response(status)
        kind = "application/octet-stream" if isinstance(obj, str) else "application/json"
        h.send_header("content-type", kind)
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _post(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        if h.path == "/v1/files":
            msg = BytesParser(policy=email_policy).parsebytes(
                b"Content-Type: " + h.headers["content-type"].encode() + b"\r\n\r\n" + body
            )
            parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
            fid = self._id("file-")
            self.files[fid] = parts["file"].get_payload(decode=True).decode()
            self._send(h, {"id": fid, "object": "file", "bytes": len(self.files[fid]), "created_at": 0,
                           "filename": "in.jsonl", "purpose": "batch", "status": "processed"})  # fmt: skip
        elif h.path == "/v1/batches":
            req = json.loads(body)
            lines = [json.loads(x) for x in self.files[req["input_file_id"]].splitlines() if x.strip()]
            assert all(x["url"] == req["endpoint"] == "/v1/chat/completions" for x in lines)
            bid = self._id("batch_")
            self.batches[bid] = {
                "kind": "openai", "open": True, "input": req, "results": {},
                "requests": [(x["custom_id"], x["body"]) for x in lines],
            }  # fmt: skip
            self._send(h, self._openai_batch(bid))
        elif h.path == "/v1/messages/batches":
            req = json.loads(body)
            bid = self._id("msgbatch_")
            self.batches[bid] = {
                "kind": "anthropic", "open": True, "results": {},
                "requests": [(x["custom_id"], x["params"]) for x in req["requests"]],
            }  # fmt: skip
            self._send(h, self._anthropic_batch(bid))
        else:
            self._send(h, {"error": {"message": f"no route {h.path}", "type": "invalid_request_error"}}, 404)

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if m := re.fullmatch(r"/v1/batches/([\w-]+)", path):
            self._send(h, self._openai_batch(m.group(1)))
        elif path == "/v1/batches":
            data = [self._openai_batch(b) for b in reversed(self.submitted("openai"))]
            self._send(h, {"object": "list", "data": data, "has_more": False})
        elif m := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
            self._send(h, self.files[m.group(1)])
        elif m := re.fullmatch(r"/v1/messages/batches/([\w-]+)/results", path):
            self._send(h, self._anthropic_results(m.group(1)))
        elif m := re.fullmatch(r"/v1/messages/batches/([\w-]+)", path):
            self._send(h, self._anthropic_batch(m.group(1)))
        elif path == "/v1/messages/batches":
            data = [self._anthropic_batch(b) for b in reversed(self.submitted("anthropic"))]
            self._send(h, {"data": data, "has_more": False, "first_id": None, "last_id": None})
        else:
            self._send(h, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}, 404)

    # -- OpenAI shapes ----------------------------------------------------------------------------
    def _openai_batch(self, bid: str) -> dict:
        b = self.batches[bid]
        n, done = len(b["requests"]), b["results"]
        obj = {
            "id": bid, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
            "input_file_id": b["input"]["input_file_id"], "completion_window": "24h",
            "status": "in_progress", "output_file_id": None, "error_file_id": None, "created_at": 1,
            "metadata": b["input"].get("metadata"),
            "request_counts": {"total": n, "completed": 0, "failed": 0},
        }  # fmt: skip
        if b["open"]:
            return obj
        ok = {c: a for c, a in done.items() if a is not None}
        failed = [c for c, a in done.items() if a is None]
        obj["status"] = "expired" if b["expired"] else "completed"
        obj["request_counts"] = {"total": n, "completed": len(ok), "failed": len(failed)}
        if ok:
            fid = self._id("file-")
            self.files[fid] = "".join(json.dumps(self._openai_line(bid, c, a)) + "\n" for c, a in ok.items())
            obj["output_file_id"] = fid
        if failed:
            fid = self._id("file-")
            self.files[fid] = "".join(json.dumps(self._openai_error(c)) + "\n" for c in failed)
            obj["error_file_id"] = fid
        return obj

    def _openai_line(self, bid: str, cid: str, text: str) -> dict:
        body = {
            "id": f"chatcmpl-{cid}", "object": "chat.completion", "created": 1,
            "model": dict(self.requests(bid))[cid]["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44},
        }  # fmt: skip
        return {"id": f"batch_req_{cid}", "custom_id": cid, "error": None,
                "response": {"status_code": 200, "request_id": f"req_{cid}", "body": body}}  # fmt: skip

    @staticmethod
    def _openai_error(cid: str) -> dict:
        message = "The server had an error processing your request."
        body = {"error": {"message": message, "type": "server_error"}}
        return {"id": f"batch_req_{cid}", "custom_id": cid, "error": None,
                "response": {"status_code": 500, "request_id": f"req_{cid}", "body": body}}  # fmt: skip

    # -- Anthropic shapes -------------------------------------------------------------------------
    def _anthropic_batch(self, bid: str) -> dict:
        b = self.batches[bid]
        n, done = len(b["requests"]), b["results"]
        ok = sum(a is not None for a in done.values())
        counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if not b["open"]:
            counts = {"processing": 0, "succeeded": ok, "errored": len(done) - ok, "canceled": 0,
                      "expired": n - len(done)}  # fmt: skip
        return {
            "id": bid, "type": "message_batch",
            "processing_status": "in_progress" if b["open"] else "ended",
            "request_counts": counts, "created_at": "2099-01-01T00:00:00Z",
            "expires_at": "2099-01-02T00:00:00Z", "ended_at": None if b["open"] else "2099-01-01T01:00:00Z",
            "archived_at": None, "cancel_initiated_at": None,
            "results_url": None if b["open"] else f"{self.url}/v1/messages/batches/{bid}/results",
        }  # fmt: skip

    def _anthropic_results(self, bid: str) -> str:
        b = self.batches[bid]
        lines = []
        for cid, params in b["requests"]:
            if cid not in b["results"]:
                result: dict = {"type": "expired"}
            elif b["results"][cid] is None:
                result = {"type": "errored", "error": {"type": "error",
                          "error": {"type": "api_error", "message": "Internal server error"}}}  # fmt: skip
            else:
                message = {
                    "id": f"msg_{cid}", "type": "message", "role": "assistant", "model": params["model"],
                    "content": [{"type": "text", "text": b["results"][cid]}], "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": 40, "output_tokens": 4},
                }  # fmt: skip
                result = {"type": "succeeded", "message": message}
            lines.append(json.dumps({"custom_id": cid, "result": result}))
        return "\n".join(lines) + "\n"
