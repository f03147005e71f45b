import anthropic

client = anthropic.Anthropic(
    # http://<your rotator>/llm/<service slug>, service target URL https://api.anthropic.com
    base_url="http://localhost:8000/llm/claude",
    api_key="<GLOBAL_PROXY_KEY>",
)

message = client.messages.create(
    model="claude-sonnet-4-6",
    max_tokens=1024,
    messages=[{"role": "user", "content": "Hello, Claude"}],
)
print(message.content[0].text)

# Streaming works the same way:
with client.messages.stream(
    model="claude-sonnet-4-6",
    max_tokens=1024,
    messages=[{"role": "user", "content": "Tell me a story."}],
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()
