"""L-adapters and E-adapters for WavLM as S3PRL upstreams."""
