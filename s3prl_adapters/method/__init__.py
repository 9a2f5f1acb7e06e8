"""The method of Otake et al. (ICASSP 2023), independent of S3PRL's runner: what an adapter is
(`adapters`), where it attaches in S3PRL's WavLM (`attach`), the settings (`config`), the upstream
expert that merges their outputs (`expert`), the frozen backbone and its checkpoint formats
(`backbone`, `hf_convert`), and the parameter counts (`params`)."""
