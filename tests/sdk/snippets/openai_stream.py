from openai import OpenAI

client = OpenAI(
    base_url="http://localhost:8000/llm/openai",
    api_key="<GLOBAL_PROXY_KEY>",
)

stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Tell me a story."}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
