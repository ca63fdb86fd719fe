"""The expert kit: fine-tune a small model with LoRA and export the adapter for llama.cpp."""
