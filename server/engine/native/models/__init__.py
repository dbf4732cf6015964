"""Model definitions. Only the Llama family (Llama 2/3, Mistral, Qwen2/2.5) for now."""

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
