"""The tools around the method: the `s3prl-adapters` command (`cli`), the paper's experiment
(`catalogue`, `benchmark`, `report`), SUPERB submissions (`submission`), the cost benchmark
(`bench`), pretraining of the tiny backbone (`pretrain`) and the GPU check (`gpu_check`)."""
