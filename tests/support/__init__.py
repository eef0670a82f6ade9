"""Test helpers: a fake OpenAI server and a real llama-cpp-python one."""
