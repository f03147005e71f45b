curl --no-buffer http://localhost:8000/llm/openai/v1/chat/completions \
  -H "Authorization: Bearer <GLOBAL_PROXY_KEY>" \
  -H "Content-Type: application/json" \
  -d '{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Tell me a story."}]}'
