"""Inference on trained runs: sampling and editing (`sampler`), MAGVIT video tasks
(`video_tasks`), decoding settings (`settings`) and pictures/GIFs (`visualize`)."""
