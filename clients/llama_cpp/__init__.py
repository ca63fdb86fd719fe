"""In-process llama.cpp backend: prompt templating, the token loop, the chat client."""
