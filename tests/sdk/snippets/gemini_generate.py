from google import genai
from google.genai import types

client = genai.Client(
    api_key="<GLOBAL_PROXY_KEY>",
    # http://<your rotator>/llm/<service slug>,
    # service target URL https://generativelanguage.googleapis.com
    http_options=types.HttpOptions(base_url="http://localhost:8000/llm/gemini"),
)

response = client.models.generate_content(
    model="gemini-2.5-flash",
    contents="Explain how AI works in a few words",
)
print(response.text)

# Streaming works the same way:
for chunk in client.models.generate_content_stream(
    model="gemini-2.5-flash",
    contents="Tell me a story.",
):
    print(chunk.text, end="", flush=True)
print()
