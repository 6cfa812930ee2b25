"""The built-in recipes (``*.toml``) and DeepSpeed configs, shipped as package data and listed
by ``rlhf recipes`` through the ``rlhf_plugins.recipes`` entry-point group."""
