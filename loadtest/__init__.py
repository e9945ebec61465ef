"""The load-test harness: drives any OpenAI-compatible completions or chat endpoint and reports latency and
throughput as `vllm bench serve` defines them. Run `python -m loadtest --help`."""
