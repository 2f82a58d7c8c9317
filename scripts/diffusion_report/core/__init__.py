"""Core maths: pure functions on tensors, named after the papers (no model loading, no files).

schedules (beta_t, alpha-bar_t), forward (q_sample, the posterior), samplers (DDIM, DDPM, inversion),
prompts and attention (prompt-to-prompt's token maps, controllers and attention processor).
"""
