from openai import OpenAI

client = OpenAI(
    # http://<your rotator>/llm/<service slug>
    base_url="http://localhost:8000/llm/openai",
    # one of GLOBAL_PROXY_KEYS, never a real OpenAI key
    api_key="<GLOBAL_PROXY_KEY>",
)

completion = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "What is the meaning of life?"}],
)
print(completion.choices[0].message.content)
