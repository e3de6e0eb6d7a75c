"""TitanInfer's foundation: configs, weights, tokenizer, reference model, sampling, data, benchmarks, gates, CLI."""
