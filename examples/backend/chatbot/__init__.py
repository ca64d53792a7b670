"""chatbot: async endpoints that read the history, await the LLM, and append."""
