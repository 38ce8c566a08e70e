"""The fake's stored objects: files, uploads, batches, vector stores and conversations.

Each upstream key is an account of its own: an object made with one key is unknown (404) to
every other, as it would be across OpenAI organisations, so a proxy that sends a follow-up to
the wrong key is caught. A batch runs when it is first retrieved: its input file's chat
requests are answered, its output file written and its usage summed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from . import faults
from . import payloads as p
from .records import Received

RECEIVED = web.RequestKey("fake_openai_received", Received)

Answer = Callable[[web.Request, object], Any]


@dataclass
class _Account:
    """What one upstream key holds."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    store_files: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    file_batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _not_found(message: str) -> web.Response:
    return faults.error_response(404, message, "invalid_request_error")


class StoredObjects:
    """The object endpoints of the fake; ``answer`` is the fake's JSON answer (with faults)."""

    def __init__(self, lock: threading.Lock, reply: Callable[[], str], answer: Answer) -> None:
        self._lock = lock
        self._reply = reply
        self._answer = answer
        self._accounts: dict[str, _Account] = {}

    def reset(self) -> None:
        with self._lock:
            self._accounts = {}

    def file_ids(self, key: str) -> list[str]:
        with self._lock:
            return list(self._account_of(key).files)

    def expire_file(self, file_id: str) -> None:
        """Forget a file in every account, as OpenAI does when it expires."""
        with self._lock:
            for account in self._accounts.values():
                account.files.pop(file_id, None)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        r = router
        r.add_post("/v1/files", self._file_create)
        r.add_get("/v1/files", self._file_list)
        r.add_get("/v1/files/{id}", self._file_retrieve)
        r.add_delete("/v1/files/{id}", self._file_delete)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/uploads", self._upload_create)
        r.add_post("/v1/uploads/{id}/parts", self._upload_part)
        r.add_post("/v1/uploads/{id}/complete", self._upload_complete)
        r.add_post("/v1/uploads/{id}/cancel", self._upload_cancel)
        r.add_post("/v1/batches", self._batch_create)
        r.add_get("/v1/batches", self._batch_list)
        r.add_get("/v1/batches/{id}", self._batch_retrieve)
        r.add_post("/v1/batches/{id}/cancel", self._batch_cancel)
        r.add_post("/v1/vector_stores", self._store_create)
        r.add_get("/v1/vector_stores", self._store_list)
        r.add_get("/v1/vector_stores/{id}", self._store_retrieve)
        r.add_post("/v1/vector_stores/{id}", self._store_update)
        r.add_delete("/v1/vector_stores/{id}", self._store_delete)
        r.add_post("/v1/vector_stores/{id}/search", self._store_search)
        r.add_post("/v1/vector_stores/{id}/files", self._store_file_create)
        r.add_get("/v1/vector_stores/{id}/files", self._store_file_list)
        r.add_get("/v1/vector_stores/{id}/files/{file_id}", self._store_file_retrieve)
        r.add_delete("/v1/vector_stores/{id}/files/{file_id}", self._store_file_delete)
        r.add_post("/v1/vector_stores/{id}/file_batches", self._file_batch_create)
        r.add_get("/v1/vector_stores/{id}/file_batches/{batch_id}", self._file_batch_retrieve)
        r.add_post("/v1/conversations", self._conversation_create)
        r.add_get("/v1/conversations/{id}", self._conversation_retrieve)
        r.add_post("/v1/conversations/{id}", self._conversation_update)
        r.add_delete("/v1/conversations/{id}", self._conversation_delete)
        r.add_post("/v1/conversations/{id}/items", self._items_create)
        r.add_get("/v1/conversations/{id}/items", self._items_list)
        r.add_get("/v1/conversations/{id}/items/{item_id}", self._item_retrieve)

    # ------------------------------------------------------------ helpers

    def _account_of(self, key: str | None) -> _Account:
        return self._accounts.setdefault(key or "", _Account())

    def _account(self, request: web.Request) -> _Account:
        return self._account_of(request[RECEIVED].key)

    @staticmethod
    def _body(request: web.Request) -> dict[str, Any]:
        received: Received = request[RECEIVED]
        if not received.body or received.headers.get("content-type") != "application/json":
            return {}
        loaded = orjson.loads(received.body)
        return loaded if isinstance(loaded, dict) else {}

    def _new_file(
        self, account: _Account, data: bytes, filename: str, purpose: str
    ) -> dict[str, Any]:
        file_id = p.new_id("file-")
        file = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": p.now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        account.files[file_id] = file
        account.contents[file_id] = data
        return file

    def _missing_files(self, account: _Account, ids: object) -> web.Response | None:
        for file_id in ids if isinstance(ids, list) else [ids]:
            if file_id not in account.files:
                return _not_found(f"No such File object: {file_id}")
        return None

    # ------------------------------------------------------------ files

    async def _file_create(self, request: web.Request) -> web.StreamResponse:
        received: Received = request[RECEIVED]
        [file] = [part for part in received.parts if part.name == "file" and part.filename]
        purpose = received.form().get("purpose", "user_data")
        with self._lock:
            created = self._new_file(
                self._account(request), file.data, file.filename or "", purpose
            )
        return await self._answer(request, created)

    async def _file_list(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            files = list(self._account(request).files.values())
        return await self._answer(request, p.page(files))

    async def _file_retrieve(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        with self._lock:
            found = self._account(request).files.get(file_id)
        if found is None:
            return _not_found(f"No such File object: {file_id}")
        return await self._answer(request, found)

    async def _file_delete(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        with self._lock:
            found = self._account(request).files.pop(file_id, None)
        if found is None:
            return _not_found(f"No such File object: {file_id}")
        return await self._answer(request, {"id": file_id, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        with self._lock:
            data = self._account(request).contents.get(file_id)
            known = file_id in self._account(request).files
        if data is None or not known:
            return _not_found(f"No such File object: {file_id}")
        return web.Response(body=data, content_type="application/octet-stream")

    # ------------------------------------------------------------ uploads

    async def _upload_create(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        upload = {
            "id": p.new_id("upload_"),
            "object": "upload",
            "bytes": body.get("bytes", 0),
            "created_at": p.now(),
            "expires_at": p.now() + 3600,
            "filename": body.get("filename", ""),
            "purpose": body.get("purpose", ""),
            "status": "pending",
            "file": None,
        }
        with self._lock:
            account = self._account(request)
            account.uploads[upload["id"]] = upload
            account.parts[upload["id"]] = []
        return await self._answer(request, upload)

    def _upload(self, request: web.Request) -> dict[str, Any] | None:
        with self._lock:
            return self._account(request).uploads.get(request.match_info["id"])

    async def _upload_part(self, request: web.Request) -> web.StreamResponse:
        upload = self._upload(request)
        if upload is None:
            return _not_found(f"No such Upload object: {request.match_info['id']}")
        [data] = [part.data for part in request[RECEIVED].parts if part.name == "data"]
        part_id = p.new_id("part_")
        with self._lock:
            self._account(request).parts[upload["id"]].append((part_id, data))
        answer = {
            "id": part_id,
            "object": "upload.part",
            "created_at": p.now(),
            "upload_id": upload["id"],
        }
        return await self._answer(request, answer)

    async def _upload_complete(self, request: web.Request) -> web.StreamResponse:
        upload = self._upload(request)
        if upload is None:
            return _not_found(f"No such Upload object: {request.match_info['id']}")
        order = self._body(request).get("part_ids", [])
        with self._lock:
            account = self._account(request)
            parts = dict(account.parts[upload["id"]])
            data = b"".join(parts[part_id] for part_id in order)
            upload["file"] = self._new_file(account, data, upload["filename"], upload["purpose"])
            upload["status"] = "completed"
        return await self._answer(request, upload)

    async def _upload_cancel(self, request: web.Request) -> web.StreamResponse:
        upload = self._upload(request)
        if upload is None:
            return _not_found(f"No such Upload object: {request.match_info['id']}")
        with self._lock:
            upload["status"] = "cancelled"
        return await self._answer(request, upload)

    # ------------------------------------------------------------ batches

    async def _batch_create(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        with self._lock:
            account = self._account(request)
            missing = self._missing_files(account, body.get("input_file_id"))
            if missing is not None:
                return missing
            batch = {
                "id": p.new_id("batch_"),
                "object": "batch",
                "endpoint": body.get("endpoint"),
                "errors": None,
                "input_file_id": body["input_file_id"],
                "completion_window": body.get("completion_window", "24h"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": p.now(),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            account.batches[batch["id"]] = batch
        return await self._answer(request, batch)

    def _run(self, account: _Account, batch: dict[str, Any]) -> None:
        """Answer every request of the batch's input file, as a finished batch has."""
        lines = account.contents[batch["input_file_id"]].splitlines()
        reply = self._reply()
        outputs: list[bytes] = []
        prompt = completion = 0
        model = "gpt-4o-mini"
        for line in filter(None, lines):
            request = orjson.loads(line)
            body = request.get("body", {})
            model = str(body.get("model", model))
            usage = p.chat_usage(p.count_words(body.get("messages", [])), len(reply.split()))
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
            response = {"status_code": 200, "body": p.chat_completion(model, reply, usage)}
            outputs.append(
                orjson.dumps(
                    {
                        "id": p.new_id("batch_req_"),
                        "custom_id": request.get("custom_id"),
                        "response": response,
                        "error": None,
                    }
                )
            )
        output = self._new_file(
            account, b"\n".join(outputs) + b"\n", "output.jsonl", "batch_output"
        )
        batch.update(
            status="completed",
            output_file_id=output["id"],
            completed_at=p.now(),
            model=model,
            request_counts={"total": len(outputs), "completed": len(outputs), "failed": 0},
            usage={
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
        )

    async def _batch_list(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            batches = list(self._account(request).batches.values())
        return await self._answer(request, p.page(batches))

    async def _batch_retrieve(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        with self._lock:
            account = self._account(request)
            batch = account.batches.get(batch_id)
            if batch is not None and batch["status"] == "validating":
                self._run(account, batch)
        if batch is None:
            return _not_found(f"No such Batch object: {batch_id}")
        return await self._answer(request, batch)

    async def _batch_cancel(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        with self._lock:
            batch = self._account(request).batches.get(batch_id)
            if batch is not None and batch["status"] == "validating":
                batch["status"] = "cancelling"
        if batch is None:
            return _not_found(f"No such Batch object: {batch_id}")
        return await self._answer(request, batch)

    # ------------------------------------------------------------ vector stores

    def _store(self, request: web.Request) -> tuple[_Account, dict[str, Any] | None]:
        account = self._account(request)
        return account, account.stores.get(request.match_info["id"])

    @staticmethod
    def _store_missing(request: web.Request) -> web.Response:
        return _not_found(f"No such vector store: {request.match_info['id']}")

    def _attach(self, account: _Account, store: dict[str, Any], file_id: str) -> dict[str, Any]:
        attached = {
            "id": file_id,
            "object": "vector_store.file",
            "created_at": p.now(),
            "vector_store_id": store["id"],
            "status": "completed",
            "usage_bytes": len(account.contents.get(file_id, b"")),
            "last_error": None,
            "attributes": {},
        }
        account.store_files[store["id"]][file_id] = attached
        count = len(account.store_files[store["id"]])
        store["file_counts"].update(completed=count, total=count)
        return attached

    async def _store_create(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        with self._lock:
            account = self._account(request)
            missing = self._missing_files(account, body.get("file_ids", []))
            if missing is not None:
                return missing
            store = {
                "id": p.new_id("vs_"),
                "object": "vector_store",
                "created_at": p.now(),
                "name": body.get("name", ""),
                "usage_bytes": 0,
                "file_counts": {
                    "in_progress": 0,
                    "completed": 0,
                    "failed": 0,
                    "cancelled": 0,
                    "total": 0,
                },
                "status": "completed",
                "last_active_at": p.now(),
                "metadata": body.get("metadata"),
            }
            account.stores[store["id"]] = store
            account.store_files[store["id"]] = {}
            for file_id in body.get("file_ids", []):
                self._attach(account, store, file_id)
        return await self._answer(request, store)

    async def _store_list(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            stores = list(self._account(request).stores.values())
        return await self._answer(request, p.page(stores))

    async def _store_retrieve(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            _, store = self._store(request)
        if store is None:
            return self._store_missing(request)
        return await self._answer(request, store)

    async def _store_update(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        with self._lock:
            _, store = self._store(request)
            if store is not None:
                store.update({k: v for k, v in body.items() if k in ("name", "metadata")})
        if store is None:
            return self._store_missing(request)
        return await self._answer(request, store)

    async def _store_delete(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            account, store = self._store(request)
            if store is not None:
                del account.stores[store["id"]]
        if store is None:
            return self._store_missing(request)
        deleted = {"id": store["id"], "object": "vector_store.deleted", "deleted": True}
        return await self._answer(request, deleted)

    async def _store_search(self, request: web.Request) -> web.StreamResponse:
        query = str(self._body(request).get("query", ""))
        words = set(query.lower().split())
        with self._lock:
            account, store = self._store(request)
            if store is None:
                return self._store_missing(request)
            hits = []
            for file_id in account.store_files[store["id"]]:
                text = account.contents.get(file_id, b"").decode(errors="replace")
                score = len(words & set(text.lower().split())) / max(1, len(words))
                if score:
                    hits.append(
                        {
                            "file_id": file_id,
                            "filename": account.files[file_id]["filename"],
                            "score": score,
                            "attributes": {},
                            "content": [{"type": "text", "text": text}],
                        }
                    )
        page = {
            "object": "vector_store.search_results.page",
            "search_query": [query],
            "data": hits,
            "has_more": False,
            "next_page": None,
        }
        return await self._answer(request, page)

    async def _store_file_create(self, request: web.Request) -> web.StreamResponse:
        file_id = self._body(request).get("file_id")
        with self._lock:
            account, store = self._store(request)
            if store is None:
                return self._store_missing(request)
            missing = self._missing_files(account, file_id)
            if missing is not None:
                return missing
            attached = self._attach(account, store, str(file_id))
        return await self._answer(request, attached)

    async def _store_file_list(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            account, store = self._store(request)
            if store is None:
                return self._store_missing(request)
            files = list(account.store_files[store["id"]].values())
        return await self._answer(request, p.page(files))

    async def _store_file_retrieve(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        with self._lock:
            account, store = self._store(request)
            found = account.store_files[store["id"]].get(file_id) if store else None
        if found is None:
            return _not_found(f"No such vector store file: {file_id}")
        return await self._answer(request, found)

    async def _store_file_delete(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        with self._lock:
            account, store = self._store(request)
            found = account.store_files[store["id"]].pop(file_id, None) if store else None
        if found is None:
            return _not_found(f"No such vector store file: {file_id}")
        deleted = {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}
        return await self._answer(request, deleted)

    async def _file_batch_create(self, request: web.Request) -> web.StreamResponse:
        file_ids = self._body(request).get("file_ids", [])
        with self._lock:
            account, store = self._store(request)
            if store is None:
                return self._store_missing(request)
            missing = self._missing_files(account, file_ids)
            if missing is not None:
                return missing
            for file_id in file_ids:
                self._attach(account, store, file_id)
            batch = {
                "id": p.new_id("vsfb_"),
                "object": "vector_store.files_batch",
                "created_at": p.now(),
                "vector_store_id": store["id"],
                "status": "completed",
                "file_counts": dict(store["file_counts"]),
            }
            account.file_batches[batch["id"]] = batch
        return await self._answer(request, batch)

    async def _file_batch_retrieve(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["batch_id"]
        with self._lock:
            found = self._account(request).file_batches.get(batch_id)
        if found is None or found["vector_store_id"] != request.match_info["id"]:
            return _not_found(f"No such vector store file batch: {batch_id}")
        return await self._answer(request, found)

    # ------------------------------------------------------------ conversations

    def _conversation(self, request: web.Request) -> tuple[_Account, dict[str, Any] | None]:
        account = self._account(request)
        return account, account.conversations.get(request.match_info["id"])

    @staticmethod
    def _conversation_missing(request: web.Request) -> web.Response:
        return _not_found(f"Conversation with id '{request.match_info['id']}' not found.")

    @staticmethod
    def _items(entries: object) -> list[dict[str, Any]]:
        items = []
        for entry in entries if isinstance(entries, list) else []:
            content = entry.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text", "text": content}]
            item = {"type": "message", "status": "completed", **entry, "content": content}
            items.append({**item, "id": p.new_id("msg_")})
        return items

    async def _conversation_create(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        conversation = {
            "id": p.new_id("conv_"),
            "object": "conversation",
            "created_at": p.now(),
            "metadata": body.get("metadata") or {},
        }
        with self._lock:
            account = self._account(request)
            account.conversations[conversation["id"]] = conversation
            account.items[conversation["id"]] = self._items(body.get("items"))
        return await self._answer(request, conversation)

    async def _conversation_retrieve(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            _, conversation = self._conversation(request)
        if conversation is None:
            return self._conversation_missing(request)
        return await self._answer(request, conversation)

    async def _conversation_update(self, request: web.Request) -> web.StreamResponse:
        metadata = self._body(request).get("metadata")
        with self._lock:
            _, conversation = self._conversation(request)
            if conversation is not None:
                conversation["metadata"] = metadata or {}
        if conversation is None:
            return self._conversation_missing(request)
        return await self._answer(request, conversation)

    async def _conversation_delete(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            account, conversation = self._conversation(request)
            if conversation is not None:
                del account.conversations[conversation["id"]]
        if conversation is None:
            return self._conversation_missing(request)
        deleted = {"id": conversation["id"], "object": "conversation.deleted", "deleted": True}
        return await self._answer(request, deleted)

    async def _items_create(self, request: web.Request) -> web.StreamResponse:
        items = self._items(self._body(request).get("items"))
        with self._lock:
            account, conversation = self._conversation(request)
            if conversation is not None:
                account.items[conversation["id"]] += items
        if conversation is None:
            return self._conversation_missing(request)
        return await self._answer(request, p.page(items))

    async def _items_list(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            account, conversation = self._conversation(request)
            items = list(account.items[conversation["id"]]) if conversation else []
        if conversation is None:
            return self._conversation_missing(request)
        return await self._answer(request, p.page(items))

    async def _item_retrieve(self, request: web.Request) -> web.StreamResponse:
        item_id = request.match_info["item_id"]
        with self._lock:
            account, conversation = self._conversation(request)
            items = account.items[conversation["id"]] if conversation else []
            found = next((item for item in items if item["id"] == item_id), None)
        if found is None:
            return _not_found(f"Item with id '{item_id}' not found.")
        return await self._answer(request, found)
