from harness import Proxy


def test_chat_completion_through_proxy(proxy: Proxy) -> None:
    client = proxy.client()
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}]
    )
    assert completion.choices[0].message.content == "Hello from fake upstream!"


def test_stream_through_proxy(proxy: Proxy) -> None:
    client = proxy.client()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from fake upstream!"
