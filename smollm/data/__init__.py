"""Data: sources, tokenizer, token shards and the mixture sampler."""
