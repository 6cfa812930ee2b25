"""The engine of rlhf-plugins: recipes, the runner, the launcher, the CLI's commands and the
implementations behind the public plugin API. Nothing here is plugin API: plugins import
``rlhf_plugins`` and ``rlhf_plugins.torch_helpers`` only (docs/plugins.md), and names here may
change in any release."""
