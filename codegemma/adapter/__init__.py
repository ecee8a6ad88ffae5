"""The FIM adapter: LoRA updates and FIM token rows that teach a base model to fill in the middle
(`lora`: the file and putting it on a model; `data`: training examples; `train`: `codegemma train-fim`)."""
